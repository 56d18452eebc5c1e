"""Scoring: the requests of a ``kind: model`` scorer (a judge), sent as a run of their own.

A judge is a batch of streamed requests, which is what batchrun runs: :func:`run_judgements`
derives a judge :class:`~batchrun.job.schema.Job` from the run's and hands it to
:func:`batchrun.run.run_job`, so judge requests go through the same pool, rate budgets, spend
cap, retries, response cache, resume and telemetry as the run's own. It grades nothing (the
scorer reads the replies it returns). In the run folder::

    judge/.batchrun.lock        held for the whole call: one scoring at a time per run folder
    judge/<scorer>/             the judge run's own run folder (results, attempts, parts,
                                run.json, traces) and its input, prompts.parquet (key, prompt)
    judgements.parquet          every judge folder's rows, keyed by the judged row and scorer

Decisions, each for a reason:

- **Lock.** The call holds ``judge/.batchrun.lock``, never the run folder's own lock, so the
  run that holds that lock may score at its end (a second ``flock`` of it, even in the same
  process, would be refused). A caller scoring a folder no run holds (``batchrun score``) takes
  the run folder's lock itself, so that no generation run changes results meanwhile.
- **Keys.** A judge row's id is ``variant:sample:digest:id`` (the judged row's key; ``digest``
  is the hash of the judge request as sent: prompt, request keys, betas). One id is always one
  request, so rewriting prompts.parquet with more (or other) rows never makes the resume refuse
  the judge folder as changed; a prompt judged before is never sent again (killed or not); a
  prompt that changed (a new completion, a scorer's new template or model) is a new request.
  judgements.parquet keeps the latest judgement of each (variant, id, sample, scorer).
- **Spend.** ``limits.max_cost_usd`` is the run folder's: results and judgements together
  (:func:`~batchrun.schedule.spend.folder_spent`); the judge run's cap is what the rest of the
  folder leaves, so the ledger never lets the total pass the cap.
- **Mode.** A judge streams, whatever ``request.mode`` the run uses (a judge waiting a day for
  a batch would hold the run's scoring that long); its rows are priced at stream rates.
- **Failures.** A judge request that fails after its attempts is a row with status ``error``:
  a score that could not be had, not a run failure (the judge run's exit 1 is not passed on).
  What stops a run (the cap, a fatal API error, a signal, an unreachable endpoint, an
  unwritable folder) raises :class:`JudgingStopped` with the judge run's exit code, once
  judgements.parquet holds what was judged.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import polars as pl
from pydantic import ValidationError

from batchrun.apis import build_request
from batchrun.errors import (
    EXIT_CAPPED,
    EXIT_FATAL,
    EXIT_OK,
    EXIT_ROW_ERRORS,
    JobError,
    JudgingStopped,
    RunFolderError,
)
from batchrun.job.request import RequestConfig
from batchrun.job.schema import Job
from batchrun.job.sections import InputConfig, OutputConfig
from batchrun.models import RequestItem, RunOutcome
from batchrun.record.files import commit, remove_temps, write_temp
from batchrun.record.folder import JUDGE_DIR, check_entries, translated
from batchrun.record.lock import RunLock
from batchrun.record.parquet import scan_table
from batchrun.record.rundir import make_run_dir
from batchrun.record.schema import RESULT_SCHEMA
from batchrun.run import run_job
from batchrun.schedule.spend import folder_spent

__all__ = ["JUDGEMENTS", "JUDGEMENT_SCHEMA", "run_judgements"]

JUDGEMENTS = "judgements.parquet"
PROMPTS = "prompts.parquet"
# results.parquet's columns, the judged row's variant (where results has none yet) and scorer.
JUDGEMENT_SCHEMA: dict[str, Any] = {**RESULT_SCHEMA, "variant": pl.String, "scorer": pl.String}
RETURNED_SCHEMA: dict[str, Any] = {
    "variant": pl.String,
    "id": pl.String,
    "sample": pl.Int64,
    "status": pl.String,
    "completion": pl.String,
    "error_message": pl.String,
}
_PROMPT_SCHEMA = {"variant": pl.String, "id": pl.String, "sample": pl.Int64, "prompt": pl.String}
_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # a scorer's and a variant's; a folder's name here
_NO_CAP_LEFT = 1e-12  # the judge run's cap when the folder has none left: it sends nothing


async def run_judgements(
    job: Job,
    *,
    scorer: str,
    request: RequestConfig,
    prompts: pl.DataFrame,
    run_dir: Path,
    transport: httpx.AsyncBaseTransport | None = None,
) -> pl.DataFrame:
    """Send each of ``prompts`` (``variant``, ``id``, ``sample``, ``prompt``: one row per
    result row to judge) once to the judge ``request`` of ``scorer``, through ``job``'s
    endpoint, limits, retries, cache and telemetry; write ``run_dir/judgements.parquet``.

    Returns one row per prompt, in order: ``variant``, ``id``, ``sample``, ``status``
    (``ok`` or ``error``), ``completion`` and ``error_message``. A prompt judged before with
    the same request is answered from the judge folder, not sent. Raises
    :class:`JudgingStopped` when the judge run stops early, RunLockedError (exit 75) when
    another process is scoring this run folder, RunFolderError (exit 74) when the folder
    cannot be written or holds ``judge`` or ``judgements.parquet`` of the wrong kind, JobError
    for prompts or a request that cannot be judged. ``transport`` replaces httpx's network
    transport (tests).
    """
    if not _NAME.fullmatch(scorer) or scorer in (".", ".."):
        raise JobError(
            f"scorer {scorer!r}: a scorer's name is letters, digits, '_', '.' and '-' (it names "
            f"the folder {run_dir / JUDGE_DIR}/<scorer>); rename it"
        )
    judge_request = _streamed(job, scorer, request)
    keyed = await asyncio.to_thread(_keyed, job, scorer, judge_request, prompts)
    if keyed.is_empty():
        return pl.DataFrame(schema=RETURNED_SCHEMA)
    root, folder = _folders(run_dir, scorer)
    with RunLock(root):
        remove_temps(run_dir, (f"{JUDGEMENTS}.",))  # what a killed scoring was writing
        remove_temps(folder, (f"{PROMPTS}.",))
        with translated(run_dir, f"writing {folder / PROMPTS}"):
            await asyncio.to_thread(_write, keyed.select("key", "prompt"), folder / PROMPTS)
        judge = await asyncio.to_thread(_judge_job, job, scorer, judge_request, folder, run_dir)
        outcome = await run_job(judge, transport=transport)
        stopped = outcome.exit_code not in (EXIT_OK, EXIT_ROW_ERRORS)
        try:
            with translated(run_dir, f"writing {JUDGEMENTS}"):
                await asyncio.to_thread(_assemble, run_dir)
        except RunFolderError:
            if not stopped:
                raise  # a stopped judge run says why first
        if not stopped:
            return await asyncio.to_thread(_judged, folder, keyed)
        message = await asyncio.to_thread(_stopped, job, scorer, run_dir, folder, outcome, keyed)
    raise JudgingStopped(message, outcome.exit_code)


def _folders(run_dir: Path, scorer: str) -> tuple[Path, Path]:
    """``judge/`` and ``judge/<scorer>/``, made private to their owner, once the run folder's
    entries are what batchrun keeps there (``judge`` a file, say, is refused)."""
    if run_dir.is_dir():
        check_entries(run_dir)
    root = make_run_dir(run_dir / JUDGE_DIR)
    return root, make_run_dir(root / scorer)


def _streamed(job: Job, scorer: str, request: RequestConfig) -> RequestConfig:
    """The judge's request as sent: one sample, streamed."""
    try:
        return request.derive({"samples": 1, "mode": "stream"})
    except ValidationError as exc:
        raise _invalid(job, scorer, exc) from None


def _invalid(job: Job, scorer: str, exc: ValidationError) -> JobError:
    lines = [
        f"{job.path}: scorer {scorer}: {'.'.join(map(str, e['loc'])) or 'request'}: "
        f"{e['msg'].removeprefix('Value error, ')}"
        for e in exc.errors(include_url=False)
    ]
    return JobError("\n".join(lines))


def _keyed(job: Job, scorer: str, request: RequestConfig, prompts: pl.DataFrame) -> pl.DataFrame:
    """``prompts`` with ``key``, the judge row's id (see the module's docstring); refuses
    prompts that could not be sent (none, blank) and a key given twice."""
    missing = [c for c in _PROMPT_SCHEMA if c not in prompts.columns]
    if missing:
        raise JobError(f"scorer {scorer}: the prompts to judge lack column(s) {missing}")
    frame = prompts.select(pl.col(c).cast(t) for c, t in _PROMPT_SCHEMA.items())
    blank = frame.filter(
        pl.col("prompt").is_null()
        | (pl.col("prompt").str.strip_chars() == "")
        | pl.col("id").is_null()
        | pl.col("sample").is_null()
        | ~pl.col("variant").str.contains(f"^{_NAME.pattern}$").fill_null(False)
    )
    if not blank.is_empty():
        shown = ", ".join(str(k) for k in blank.select("variant", "id", "sample").head(3).rows())
        raise JobError(
            f"scorer {scorer}: {blank.height} row(s) to judge have an empty prompt or key, "
            f"e.g. (variant, id, sample) {shown}; judge only rows with a completion, and check "
            "the scorer's prompt template"
        )
    twice = frame.filter(frame.select("variant", "id", "sample").is_duplicated())
    if not twice.is_empty():
        shown = ", ".join(str(k) for k in twice.select("variant", "id", "sample").head(3).rows())
        raise JobError(f"scorer {scorer}: rows to judge given twice: {shown}")
    api, params, betas = request.api_spec, request.params, job.endpoint.betas
    keys = []
    for variant, ident, sample, prompt in frame.iter_rows():
        item = RequestItem(id=ident, sample=0, messages=({"role": "user", "content": prompt},))
        digest = build_request(api, item, params, betas)[1][:16]
        keys.append(f"{variant}:{sample}:{digest}:{ident}")
    return frame.with_columns(key=pl.Series(keys, dtype=pl.String))


def _write(frame: pl.DataFrame, path: Path) -> None:
    """``frame`` as the Parquet file ``path``, atomically: whole or not there."""
    commit(write_temp(path.parent, path.name, frame.write_parquet), path)


def _judge_job(job: Job, scorer: str, request: RequestConfig, folder: Path, run_dir: Path) -> Job:
    """The run of the judge requests: its input and run folder in ``folder``, the job's
    endpoint, limits, retries, timeouts, telemetry, cache, simulator and prices, no variants
    or scorers of its own, and under ``limits.max_cost_usd`` what the rest of the run folder
    left of it. Keeps the job file's path (run.json names it)."""
    fields = {
        "name": f"{job.name}.{scorer}"[:128],
        "input": InputConfig(path=str(folder / PROMPTS), id_column="key", prompt="{prompt}"),
        "endpoint": job.endpoint,
        "request": request,
        "limits": job.limits,
        "retry": job.retry,
        "timeouts": job.timeouts,
        "output": OutputConfig(dir=str(folder).replace("{", "{{").replace("}", "}}")),
        "telemetry": job.telemetry,
        "cache": job.cache,
        "sim": job.sim,
        "prices": job.prices,
    }
    try:
        judge = Job.model_validate(fields).with_path(job.path)
    except ValidationError as exc:
        raise _invalid(job, scorer, exc) from None
    cap = job.limits.max_cost_usd
    if cap is None:
        return judge
    rest = folder_spent(job, run_dir) - folder_spent(judge, folder)
    limits = job.limits.model_copy(update={"max_cost_usd": max(cap - rest, _NO_CAP_LEFT)})
    return judge.model_copy(update={"limits": limits})


def _assemble(run_dir: Path) -> None:
    """Write ``run_dir/judgements.parquet`` from every judge folder under ``judge/``: its rows
    with the judged row's ``variant``, ``id`` and ``sample`` and the ``scorer``, the latest of
    each, ordered by scorer and key. Call it holding ``judge/.batchrun.lock``."""
    root = run_dir / JUDGE_DIR
    frames = [
        scan_table(folder, "results").with_columns(scorer=pl.lit(folder.name))
        for folder in sorted(root.iterdir())
        if folder.is_dir()
        and _NAME.fullmatch(folder.name)
        and ((folder / "results.parquet").exists() or (folder / "parts").is_dir())
    ]
    if not frames:
        return
    key = pl.col("id").str.splitn(":", 4)
    table = (
        pl.concat(frames)
        .with_columns(
            variant=key.struct.field("field_0"),
            sample=key.struct.field("field_1").cast(pl.Int64, strict=False),
            id=key.struct.field("field_3"),
            input_row=pl.lit(None, pl.Int64),  # the judged row's is in results.parquet
        )
        .drop_nulls(["variant", "id", "sample"])
        .sort("finished_at", nulls_last=False, maintain_order=True)
        .unique(["scorer", "variant", "id", "sample"], keep="last", maintain_order=True)
        .sort("scorer", "variant", "id", "sample")
        .select(pl.col(c).cast(t) for c, t in JUDGEMENT_SCHEMA.items())
        .collect()
    )
    _write(table, run_dir / JUDGEMENTS)


def _judged(folder: Path, keyed: pl.DataFrame) -> pl.DataFrame:
    """One row per prompt of ``keyed``: its judgement in ``folder`` (status null: none)."""
    rows = (
        scan_table(folder, "results")
        .select(pl.col("id").alias("key"), "status", "completion", "error_message")
        .filter(pl.col("key").is_in(keyed["key"].implode()))
        .collect()
    )
    return keyed.join(rows, on="key", how="left", maintain_order="left").select(
        list(RETURNED_SCHEMA)
    )


def _judge_model(job: Job, scorer: str) -> str:
    """The model scorer ``scorer``'s judge asks (its own ``model``, else the job's)."""
    own = next((getattr(s, "model", None) for s in job.scorers if s.name == scorer), None)
    return str(own or job.request.model)


def _stopped(
    job: Job, scorer: str, run_dir: Path, folder: Path, outcome: RunOutcome, keyed: pl.DataFrame
) -> str:
    """Why judging stopped, how many prompts it left, and how to go on."""
    try:
        left = f"{_judged(folder, keyed)['status'].null_count():,}"
    except Exception:  # a folder that cannot be read: the reason for stopping comes first
        left = "some"
    if outcome.exit_code == EXIT_FATAL:  # its hint names request.*: the judge's are the scorer's
        return (
            f"judging with scorer {scorer} stopped: {outcome.message}; {left} prompt(s) not "
            f"judged. The judge's request is the job's request: with scorer {scorer}'s keys "
            f"(model {_judge_model(job, scorer)}): fix them under scorers:, then score again"
        )
    if outcome.exit_code != EXIT_CAPPED:
        return (
            f"judging with scorer {scorer} stopped: {outcome.message}; {left} prompt(s) not judged"
        )
    cap = job.limits.max_cost_usd or 0.0
    return (
        f"the spend cap stopped judging with scorer {scorer}: the run folder {run_dir} has "
        f"spent ${folder_spent(job, run_dir):,.6f} of limits.max_cost_usd ${cap:,.6f} (results "
        f"and judgements together); {left} prompt(s) not judged. Raise limits.max_cost_usd "
        "and score again to go on"
    )
