"""Before the first request: every check a run makes, shared by the run and ``batchrun validate``.

:func:`preflight` is the start of :func:`batchrun.run.run_job`: the input, the columns the
scorers use (:func:`check_columns`, which scoring makes too), the API key (:func:`api_key`, the
only place it is read), the run folder (its path, its entries, its lock), the mode's own state
in it, ``--fresh`` and the resume plan (which refuses a folder holding another job's results,
or with ``rerun_changed`` sends the changed requests again). ``dry`` is the same sequence
without writing: the folder is looked at, never created, locked, cleared or quarantined, so
``validate`` refuses what the run would refuse, with the same message and exit code.
:func:`forecast` then says what the run would send and what it may cost. Nothing here
sends a request; with ``dry`` nothing here writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from batchrun.apis import build_request
from batchrun.clock import Clock
from batchrun.errors import JobError
from batchrun.job.prices import CacheRates
from batchrun.job.schema import Job
from batchrun.load.inputs import check_input, iter_batches
from batchrun.load.resume import Done, resume_plan
from batchrun.load.sources import sources
from batchrun.models import InputSummary, RequestItem, Stop
from batchrun.record.cost import BATCH_DISCOUNT, rates_for
from batchrun.record.files import check_private
from batchrun.record.folder import Stateless, check_entries, open_run_dir, translated
from batchrun.record.lock import RunLock, check_free
from batchrun.record.response_cache import cache_key, peek_cache
from batchrun.record.rundir import clear, make_run_dir
from batchrun.record.schema import RESULT_SCHEMA
from batchrun.schedule.spend import SpendLedger, folder_spent
from batchrun.shard.plan import shard_summary

__all__ = [
    "Forecast",
    "Preflight",
    "VariantForecast",
    "api_key",
    "check_columns",
    "check_job",
    "describe",
    "dry_mode",
    "forecast",
    "predict",
    "preflight",
]


class FolderMode(Protocol):
    """What a mode (``run.Mode``) keeps in the run folder, as far as the checks go."""

    def check(self, run_dir: Path, fresh: bool) -> None:
        """What :meth:`prepare` would refuse, found without writing."""
        ...

    def prepare(self, run_dir: Path, fresh: bool) -> None:
        """Under the lock, before the resume plan: the mode's own state in the run folder."""
        ...

    async def in_flight(self, run_dir: Path) -> set[tuple[str, str, int]]:
        """Requests sent by an earlier process and not collected yet: not to send again."""
        ...


@dataclass(frozen=True, slots=True)
class Preflight:
    """A run that passed every check: its input, key, folder, and what it skips."""

    summary: InputSummary
    key: str
    run_dir: Path
    done: Done  # skipped: done, or still in a batch (``in_flight`` of them)
    in_flight: int = 0
    folder_exists: bool = True


@contextlib.asynccontextmanager
async def preflight(
    job: Job,
    mode: FolderMode,
    *,
    now: datetime,
    limit: int | None = None,
    fresh: bool = False,
    retry_errors: bool = False,
    rerun_changed: bool = False,
    dry: bool = False,
) -> AsyncIterator[Preflight]:
    """Check ``job`` as its run does before the first request, holding the run folder's lock
    while the context lasts (``dry``: only checking that it is free). Raises what the run
    raises: JobError (exit 2), RunFolderError (74), RunLockedError (75)."""
    inputs, key = check_job(job, limit=limit)
    summary = shard_summary(job, inputs, limit)  # the shard's part
    run_dir = open_run_dir(_look if dry else make_run_dir, job.run_dir(now))
    exists = run_dir.is_dir()
    if exists:
        check_entries(run_dir)  # the lock file included: a folder there is refused
    if dry and exists:
        check_free(run_dir)
    with contextlib.nullcontext() if dry else RunLock(run_dir):
        if dry:
            mode.check(run_dir, fresh)
        else:
            mode.prepare(run_dir, fresh)
        if fresh and not dry:
            with translated(run_dir, "clearing it for --fresh"):
                clear(run_dir)
        done = Done()
        if exists and not fresh:  # --fresh: nothing to plan in the folder, once cleared
            done = await asyncio.to_thread(
                partial(resume_plan, rerun_changed=rerun_changed, quarantine=not dry),
                job,
                run_dir,
                limit,
                retry_errors,
            )
        busy = await mode.in_flight(run_dir) if exists else set()
        yield Preflight(summary, key, run_dir, done.also(busy), len(busy), exists)


def _look(path: Path) -> Path:
    """``record.rundir.make_run_dir`` without creating anything: the run folder it would make
    or use, refused as it would refuse it (its message, with the reason it would meet)."""
    run_dir = path.resolve()
    try:
        if run_dir.exists() and not run_dir.is_dir():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(run_dir))
        nearest = next(p for p in (run_dir, *run_dir.parents) if p.exists())
        if not nearest.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(nearest))
        if nearest == run_dir:
            check_private(run_dir)
            check_private(run_dir / "parts", what="run folder's parts/ folder")
        if not os.access(nearest, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(nearest))
    except OSError as exc:  # make_run_dir's words for what its mkdir would meet
        raise JobError(
            f"output.dir: cannot write the run folder {run_dir}: {exc.strerror}; "
            "choose a folder you can write with --set output.dir=..."
        ) from exc
    return run_dir


def check_job(job: Job, *, limit: int | None = None) -> tuple[InputSummary, str]:
    """The checks of the job itself, before its folder is looked at: the input (with
    ``--limit``), the columns its scorers use (a scorer naming a column no row has would fail
    only after the run) and the API key; the input's summary and the key. ``--shards N
    --local`` makes them once before starting any shard, so a bad input is one error, not N."""
    inputs = check_input(job, limit=limit)
    if job.scorers:
        check_columns(job, [*RESULT_SCHEMA, "variant"])
    return inputs, api_key(job)


def api_key(job: Job) -> str:
    """The key the job names, or a stand-in for the built-in simulator: the only place the key
    is read (:mod:`batchrun.call.endpoint` puts it into the header)."""
    name = job.endpoint.api_key_env
    key = os.environ.get(name, "")
    if key.strip():
        return key.strip()
    if job.endpoint.base_url == "sim":
        return "sim-key"
    state = "empty" if name in os.environ else "not set"
    raise JobError(
        f"{job.path}: endpoint.api_key_env: the environment variable {name} is {state}; "
        f"export {name}=... with your API key (or use base_url: sim to run on the built-in "
        "simulator)"
    )


def check_columns(job: Job, result_columns: list[str]) -> None:
    """Every column the scorers' templates use is an input or a result column; else a
    JobError naming ``scorers[i]``, before any row is scored or any judge asked."""
    inputs: set[str] = set()
    for src in sources(job):
        inputs |= set(src.schema.names())
    for i, scorer in enumerate(job.scorers):
        missing = [c for c in scorer.columns() if c not in inputs and c not in result_columns]
        if missing:
            raise JobError(
                f"{job.path}: scorers[{i}] ({scorer.name}) uses column {missing[0]!r}, which "
                f"neither the input ({', '.join(sorted(inputs))}) nor results.parquet "
                "(completion, stop_reason, output_tokens, ...) has; fix the scorer"
            )


def dry_mode(job: Job) -> FolderMode:
    """The job's mode, made only to be checked (its ``check`` and ``in_flight``): batch mode's
    batches in the folder; stream mode has none, and its driver (the whole call stage) is not
    loaded for ``validate``."""
    if job.request.mode == "batch":
        from batchrun.batch import BatchMode

        return BatchMode(job, Clock(), asyncio.sleep, Stop())
    return Stateless()


@dataclass(frozen=True, slots=True)
class VariantForecast:
    """One variant's part of a :class:`Forecast`: its model, requests to send, their tokens
    and cost at its model's prices (``None`` when it has none)."""

    name: str
    model: str
    to_send: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    price: tuple[float, float] | None = None
    input_rate: float | None = None
    stream_usd: float | None = None
    batch_usd: float | None = None

    def priced(self, job: Job) -> VariantForecast:
        """This forecast with its cost, at the variant's model's list prices."""
        request = job.variant(self.name).request
        rates = rates_for(request.model, job.prices)
        if rates is None:
            return self
        input_rate = {
            "5m": rates.cache_write_5m,
            "1h": rates.cache_write_1h,
        }.get(request.prompt_cache or "", rates.input)
        usd = (self.input_tokens * input_rate + self.output_tokens * rates.output) / 1e6
        return replace(
            self,
            price=(rates.input, rates.output),
            input_rate=input_rate,
            stream_usd=round(usd, 6),
            batch_usd=round(usd * BATCH_DISCOUNT, 6),
        )

    def as_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["price"] = (
            None if self.price is None else {"input": self.price[0], "output": self.price[1]}
        )
        return out


@dataclass(frozen=True, slots=True)
class Forecast:
    """What a run would do now (see :func:`forecast`). Token counts are of the requests to
    send; ``output_tokens`` is their ``max_tokens``: a ceiling, not an estimate. Costs are
    ``None`` when a model has no price; ``price`` and ``input_rate`` are the model's when the
    job runs one model (``variants`` has each variant's)."""

    job: str
    run_dir: Path
    folder_exists: bool
    api: str
    mode: str
    model: str
    samples: int
    endpoint: str
    input_rows: int
    requests: int
    done: int
    in_batches: int
    to_send: int
    new: int
    again: int
    input_tokens: int
    output_tokens: int
    price: tuple[float, float] | None
    # What an input token is priced at: the list input price, or with prompt_cache the cache
    # write price of its TTL (every input token written: the worst case).
    input_rate: float | None
    stream_usd: float | None
    batch_usd: float | None
    # With limits.max_cost_usd: the folder's spend so far, the worst case of the whole job
    # (that plus every request to send at its worst, at the job's mode's prices) and how many
    # of the requests to send fit under the cap, in order, at their worst.
    cap_usd: float | None = None
    spent_usd: float | None = None
    worst_usd: float | None = None
    fit_requests: int | None = None
    variants: tuple[VariantForecast, ...] = ()
    # Requests whose rows the job would now send differently, by variant: refused, or sent
    # again with --rerun-changed (then counted in ``again``).
    changed: dict[str, int] = field(default_factory=dict)
    # Requests the response cache (cache.mode read or read_write) answers now: not in
    # ``to_send``, nor in the tokens, cost and worst case.
    cache_hits: int = 0
    # The judges of ``kind: model`` scorers: one request per request to send and judge, at
    # most (only rows that end ok are judged), and their worst case at stream prices (the
    # completion judged at its max_tokens); included in ``worst_usd``: the cap is the folder's.
    judge_requests: int = 0
    judge_usd: float | None = None

    def as_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["run_dir"] = str(self.run_dir)
        out["price"] = (
            None if self.price is None else {"input": self.price[0], "output": self.price[1]}
        )
        out["variants"] = [v.as_json() for v in self.variants]
        return out


def forecast(
    job: Job, plan: Preflight, *, limit: int | None = None, fresh: bool = False
) -> Forecast:
    """What the run would send after ``plan``: the requests (counted from the input, as the run
    will read it), their input tokens (the API's estimate, as the rate budget takes it: not
    ``count_tokens``, which would send) and their output ceiling (``max_tokens``), priced at
    each variant's model's list prices at the stream and the batch rate. Reads the input once
    more. With ``limits.max_cost_usd``, also the worst case against the cap (``fresh``: the
    folder's spend so far will be cleared)."""
    api = job.request.api_spec
    params = {v.name: v.request.params for v in job.effective_variants}
    sides = {v.name: VariantForecast(v.name, v.request.model) for v in job.effective_variants}
    counts = {name: [0, 0, 0] for name in sides}  # to send, input tokens, output tokens
    cap = job.limits.max_cost_usd
    ledger = SpendLedger.for_job(job, on_capped=lambda: None)
    spent = worst = 0.0
    fit = 0
    if cap is not None and plan.folder_exists and not fresh:
        spent = worst = folder_spent(job, plan.run_dir)
    judges = _judges(job)
    judge_usd = 0.0
    cache = peek_cache(job.cache, job.base_dir)
    hits = 0
    for batch in plan.done.filter(job, iter_batches(job, limit=limit)):
        for item in batch:
            body, request_hash = build_request(api, item, params[item.variant], job.endpoint.betas)
            if cache is not None and _cached(cache, job, request_hash, item.sample):
                hits += 1  # answered from the response cache: nothing sent, nothing spent
                continue
            count = counts[item.variant]
            tokens_in, tokens_out = api.estimate_input_tokens(body), api.output_reservation(body)
            count[0] += 1
            count[1] += tokens_in
            count[2] += tokens_out
            if cap is not None:
                worst += ledger.worst_case(api, body, item.variant)
                fit += worst <= cap
            for judge_in, judge_out, rates in judges:  # the prompt holds the row and its reply
                if rates is not None:
                    judged = tokens_in + tokens_out + judge_in
                    judge_usd += (judged * rates.input + judge_out * rates.output) / 1e6
    if cache is not None:
        cache.close()
    if cap is not None:
        worst += judge_usd  # the judges ask after the run's requests: not in ``fit``
    per = tuple(
        replace(sides[name], to_send=c[0], input_tokens=c[1], output_tokens=c[2]).priced(job)
        for name, c in counts.items()
    )
    to_send, tokens_in, tokens_out = (sum(c[i] for c in counts.values()) for i in range(3))
    one = per[0] if len(per) == 1 else None
    costs = [v.stream_usd for v in per]
    stream_usd = None if None in costs else sum(c or 0.0 for c in costs)
    return Forecast(
        job=str(job.path),
        run_dir=plan.run_dir,
        folder_exists=plan.folder_exists,
        api=job.request.api,
        mode=job.request.mode,
        model=", ".join(dict.fromkeys(v.model for v in per)),
        samples=job.request.samples,
        endpoint=str(job.endpoint.base_url),
        input_rows=plan.summary.rows,
        requests=plan.summary.requests,
        done=len(plan.done),
        in_batches=plan.in_flight,
        to_send=to_send,
        new=max(0, to_send - plan.done.again),
        again=plan.done.again,
        input_tokens=tokens_in,
        output_tokens=tokens_out,
        price=one.price if one is not None else None,
        input_rate=one.input_rate if one is not None else None,
        stream_usd=None if stream_usd is None else round(stream_usd, 6),
        batch_usd=None if stream_usd is None else round(stream_usd * BATCH_DISCOUNT, 6),
        cap_usd=cap,
        spent_usd=None if cap is None else round(spent, 6),
        worst_usd=None if cap is None else round(worst, 6),
        fit_requests=None if cap is None else fit,
        variants=per,
        changed=dict(plan.done.changed),
        cache_hits=hits,
        judge_requests=to_send * len(judges),
        judge_usd=round(judge_usd, 6) if all(r is not None for *_, r in judges) else None,
    )


def _cached(cache: sqlite3.Connection, job: Job, request_hash: str, sample: int) -> bool:
    """Whether the response cache holds the answer to this request (the run's lookup)."""
    endpoint = job.endpoint
    key = cache_key(request_hash, sample, endpoint.anthropic_version, endpoint.base_url)
    try:
        return cache.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None
    except sqlite3.Error:
        return False


def _judges(job: Job) -> list[tuple[int, int, CacheRates | None]]:
    """Each ``kind: model`` scorer's request, as the forecast prices it: the input tokens of
    its prompt template (the judged request and its completion come on top), its
    ``max_tokens``, and its model's rates (``None``: no price)."""
    from batchrun.job.scorers import ModelScorer

    api = job.request.api_spec
    out = []
    for scorer in job.scorers:
        if not isinstance(scorer, ModelScorer):
            continue
        request = job.request.derive({**scorer.request_changes(), "mode": "stream"})
        item = RequestItem(id="", sample=0, messages=({"role": "user", "content": scorer.prompt},))
        body = api.body(item, request.params)
        rates = rates_for(request.model, job.prices)
        out.append((api.estimate_input_tokens(body), api.output_reservation(body), rates))
    return out


async def predict(
    job: Job,
    *,
    limit: int | None = None,
    fresh: bool = False,
    retry_errors: bool = False,
    rerun_changed: bool = False,
    now: datetime | None = None,
) -> Forecast:
    """``batchrun validate``: :func:`preflight` with ``dry``, then :func:`forecast`."""
    when = now or datetime.now(UTC)
    mode = dry_mode(job)
    async with preflight(
        job,
        mode,
        now=when,
        limit=limit,
        fresh=fresh,
        retry_errors=retry_errors,
        rerun_changed=rerun_changed,
        dry=True,
    ) as plan:
        return await asyncio.to_thread(forecast, job, plan, limit=limit, fresh=fresh)


def describe(seen: Forecast, *, shown: str, retry_errors: bool = False) -> str:
    """The prediction as a few lines for people (``shown``: the job file as they named it)."""
    lines = [
        f"{shown}: valid. {seen.input_rows} input rows, {seen.requests} requests ({seen.api} "
        f"API, {seen.mode} mode, model {seen.model}, {seen.samples} sample(s) per row), "
        f"endpoint {seen.endpoint}",
        f"run folder: {seen.run_dir}" + ("" if seen.folder_exists else " (not created yet)"),
    ]
    why = "ended in error" if retry_errors else "ended in a transient error"
    if seen.changed:
        why += f", or the request changed: {sum(seen.changed.values()):,}, --rerun-changed"
    lines.append(
        f"to send:    {seen.to_send:,} requests: {seen.new:,} new, {seen.again:,} again "
        f"(their rows {why})"
    )
    if seen.cache_hits:
        lines.append(
            f"cached:     {seen.cache_hits:,} requests answered from the response cache "
            "(cache.mode): nothing sent, no cost"
        )
    held = f"; {seen.in_batches:,} still in a batch, to collect" if seen.in_batches else ""
    lines.append(f"done:       {seen.done:,} requests, not sent again{held}")
    if seen.to_send:
        lines.append(
            f"tokens:     ~{seen.input_tokens:,} input (batchrun's estimate, not the API's "
            f"count); at most {seen.output_tokens:,} output (max_tokens of every request: a "
            "worst case)"
        )
    if len(seen.variants) > 1:
        lines.append(f"variants:   {len(seen.variants)}, each row and sample under every one:")
        lines += [
            f"  {v.name}: {v.to_send:,} to send; {_cost(v, named=True)}" for v in seen.variants
        ]
        if seen.stream_usd is not None and seen.batch_usd is not None:
            lines.append(
                f"cost:       at most {_usd(seen.stream_usd)} in stream mode, "
                f"{_usd(seen.batch_usd)} in batch mode, all variants together"
            )
    elif seen.variants:
        lines.append(f"cost:       {_cost(seen.variants[0])}")
    if seen.judge_requests:
        cost = "no list price" if seen.judge_usd is None else f"at most {_usd(seen.judge_usd)}"
        lines.append(
            f"judges:     up to {seen.judge_requests:,} requests of the model scorers, one per "
            f"row that ends ok; {cost} in stream mode (the completion judged at its max_tokens)"
        )
    if seen.cap_usd is not None and seen.worst_usd is not None:
        lines.append(f"spend cap:  {_cap_line(seen, seen.cap_usd, seen.worst_usd)}")
    return "\n".join(lines)


def _cap_line(seen: Forecast, cap: float, worst: float) -> str:
    """The whole job's worst case against ``limits.max_cost_usd``."""
    spent = f" ({_usd(seen.spent_usd)} spent already)" if seen.spent_usd else ""
    text = f"worst case {_usd(worst)}{spent} against the cap {_usd(cap)} ({seen.mode} prices)"
    judges = " (the judges' included)" if seen.judge_requests else ""
    text = text.replace(" against", f"{judges} against", 1)
    if worst <= cap:
        return text + ": every request fits"
    if seen.fit_requests == seen.to_send:
        return text + (
            ": every request of the run fits, but the judges' may not: scoring would stop "
            "(exit 4, raise limits.max_cost_usd and score again to go on)"
        )
    return (
        text + f": the run would stop after about {seen.fit_requests:,} rows (of "
        f"{seen.to_send:,} requests to send; exit 4, raise limits.max_cost_usd to go on)"
    )


def _cost(v: VariantForecast, *, named: bool = False) -> str:
    """A variant's cost at most, at its model's list prices (``named``: saying which), in
    words."""
    if v.price is None or v.stream_usd is None or v.batch_usd is None:
        return f"model {v.model} has no list price (add it under prices:)"
    written = v.input_rate is not None and v.input_rate != v.price[0]
    rate = f"${v.input_rate:g} in as cache writes" if written else f"${v.price[0]:g} in"
    worst = "input and output at their worst case" if written else "output at its worst case"
    whose = f"{v.model}'s " if named else ""
    return (
        f"at most {_usd(v.stream_usd)} in stream mode, {_usd(v.batch_usd)} in batch mode, at "
        f"{whose}list prices ({rate}, ${v.price[1]:g} out per million tokens), {worst}"
    )


def _usd(value: float) -> str:
    return f"${value:,.2f}" if value >= 1 else f"${value:.4f}"
