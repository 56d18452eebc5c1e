"""Stage 1, load: the resume plan. Which requests an earlier run in the folder has done, checked
against what the job would send now, and the input streamed without them. Shared by stream and
batch mode; it sends nothing and writes nothing (it reads the folder through
``record.parquet``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path

import polars as pl

from batchrun.apis import build_request
from batchrun.errors import JobError, RetryableError
from batchrun.job.schema import Job
from batchrun.load.inputs import iter_batches
from batchrun.models import RequestItem
from batchrun.record.keyhash import seen_twice
from batchrun.record.parquet import (
    KeyHash,
    hash_keys,
    request_keys,
    resume_index,
    resume_keys,
    scan_table,
)
from batchrun.record.verify import check_final

__all__ = ["Done", "pending_items", "resume_plan"]

_BLOCK = 1000  # requests planned, and checked against the plan, together
# Errors the client itself gives an attempt; all of them may pass if the request is sent again.
_CLIENT_TRANSIENT = ("connection_error", "timeout", "stream_error")
_KEY = ["variant", "id", "sample"]  # a row's key
_EXAMPLES = 3  # changed requests named in the refusal


class _Keyed:
    """Rows of the run folder found by their exact (variant, id, sample), a batch of requests
    at a time.

    The rows stay in file order; their 64-bit key hashes are sorted, with each one's row number,
    and looked up by binary search, then the keys themselves are compared, so two keys with one
    hash are never taken for each other. Rows whose hash another row has too (a 2^-64 chance a
    pair, or a test's forced collision) are kept aside and joined by their keys. A row costs its
    key and values and 12 bytes of index: ~40 MB for a million, where a dict of Python tuples
    took ~800 MB. (Sorting the rows themselves, strings and all, took 90 MB more.)
    """

    def __init__(self, frame: pl.DataFrame, key_hash: KeyHash) -> None:
        """``frame``: ``_hash`` (by ``key_hash``), ``variant``, ``id``, ``sample`` and value
        columns, keys unique."""
        self._key_hash = key_hash
        order = frame["_hash"].arg_sort()
        hashes = frame["_hash"].gather(order)
        self._table = frame.drop("_hash")
        self._shared = self._table.clear()
        twice = seen_twice(hashes)
        if not twice.is_empty():
            alone = ~hashes.is_in(twice.implode())
            self._shared = self._table[order.filter(~alone)]
            order, hashes = order.filter(alone), hashes.filter(alone)
        self._order, self._hashes = order, hashes

    def match(self, items: list[RequestItem]) -> pl.DataFrame:
        """One row per item, in order: its row's values, null where the folder has no row."""
        variants = [item.variant for item in items]
        ids, samples = [item.id for item in items], [item.sample for item in items]
        keys = resume_keys(variants, ids, samples, key_hash=self._key_hash)
        values = self._table.columns[3:]
        if self._hashes.len():
            at = self._hashes.search_sorted(keys["_hash"]).clip(upper_bound=self._hashes.len() - 1)
            hit = self._table[self._order.gather(at)]
            same = (
                (self._hashes.gather(at) == keys["_hash"])
                & (hit["variant"] == keys["variant"])
                & (hit["id"] == keys["id"])
                & (hit["sample"] == keys["sample"])
            )
            found = hit.select(pl.when(pl.lit(same)).then(c).alias(c) for c in values)
        else:
            found = keys.select(pl.lit(None, self._table.schema[c]).alias(c) for c in values)
        if not self._shared.height:
            return found
        aside = keys.join(self._shared, on=_KEY, how="left", maintain_order="left")
        return found.select(pl.coalesce(c, aside[c]) for c in values)


class Done:
    """What a resumed run skips, planned by :func:`resume_plan`: a flag for each request in the
    order :func:`iter_batches` yields them (a bit each: 125 kB for a million, where a set of
    the done keys held ~470 MB all run), with a check that each block of requests is still the
    one planned; and any (variant, id, sample) given to :meth:`also`. ``len``: the requests
    skipped as done. ``again``: the requests the folder has a row for that are sent again (a
    transient error, or any error with ``retry_errors``, or with ``--rerun-changed`` a request
    that changed: ``changed`` of them, by variant). ``block``: the requests planned and checked
    together (as :func:`resume_plan` had it).
    """

    def __init__(
        self,
        skip: pl.Series | None = None,
        marks: list[int] | None = None,
        also: frozenset[tuple[str, str, int]] = frozenset(),
        *,
        again: int = 0,
        changed: dict[str, int] | None = None,
        block: int = _BLOCK,
    ) -> None:
        self._block = block
        self._skip = skip
        self._marks = marks or []
        self._also = also
        self.again = again
        self.changed = changed or {}
        self._count = int(skip.sum()) if skip is not None else 0

    def __len__(self) -> int:
        return self._count

    def also(self, keys: Iterable[tuple[str, str, int]]) -> Done:
        """These (variant, id, sample) keys skipped too (batch mode's requests still in a
        batch)."""
        also = self._also | frozenset(keys)
        return Done(
            self._skip,
            self._marks,
            also,
            again=self.again,
            changed=self.changed,
            block=self._block,
        )

    def filter(self, job: Job, batches: Iterator[list[RequestItem]]) -> Iterator[list[RequestItem]]:
        """The requests of ``batches`` (the input as planned) not to skip, a block at a time."""
        also = self._also
        for number, block in enumerate(_blocks(batches, self._block)):
            skip = [False] * len(block)
            if self._skip is not None:
                if number >= len(self._marks) or self._marks[number] != _mark(block):
                    raise JobError(
                        f"input.path {job.input.path!r}: the input changed while the run "
                        "started; run the job again"
                    )
                skip = self._skip.slice(number * self._block, len(block)).to_list()
            yield [
                item
                for item, done in zip(block, skip, strict=True)
                if not done and (not also or (item.variant, item.id, item.sample) not in also)
            ]


def _blocks(batches: Iterator[list[RequestItem]], size: int) -> Iterator[list[RequestItem]]:
    """The requests of ``batches`` in lists of ``size`` (the last may be shorter), so a
    request's block depends on its place in the input only, not on how the input was read."""
    held: list[RequestItem] = []
    for batch in batches:
        held += batch
        while len(held) >= size:
            yield held[:size]
            del held[:size]
    if held:
        yield held


def _mark(block: list[RequestItem]) -> int:
    """A block's requests, as one number (Python's hash: the same within one process)."""
    return hash(tuple((item.variant, item.id, item.sample) for item in block))


def resume_plan(
    job: Job,
    run_dir: Path,
    limit: int | None,
    retry_errors: bool,
    *,
    rerun_changed: bool = False,
    quarantine: bool = True,
    key_hash: KeyHash = hash_keys,
    block: int = _BLOCK,
) -> Done:
    """The requests to skip; refuses to resume when the job now asks otherwise (unless
    ``rerun_changed``: then the requests that changed are sent again, and their new rows
    replace the old), or when a final file of the folder is damaged (checkpoint parts that
    are get quarantined instead, unless not ``quarantine``: ``batchrun validate`` only leaves
    them out, moving nothing).

    A request is compared, by its key (variant, id, sample), by the hash of what would be sent.
    Any difference (model, template, max_tokens, input text, ...) means the folder's row
    answers another question. A variant new to the folder has no rows: all its requests are
    sent. The folder's rows are held only while the input is read once, a batch at a time.
    ``key_hash`` (how the folder's rows are found) and ``block`` (requests planned together)
    are for tests.
    """
    for final in ("results.parquet", "attempts.parquet"):
        check_final(run_dir / final)  # damaged: refused, never read as empty
    index = resume_index(run_dir, key_hash=key_hash, quarantine=quarantine)
    if index.is_empty():
        return Done(block=block)
    columns = _skip_rule(job, run_dir, index, retry_errors, key_hash)
    table = _Keyed(columns, key_hash)
    del index
    api = job.request.api_spec
    params = {v.name: v.request.params for v in job.effective_variants}
    flags, marks, again = list[pl.Series](), list[int](), 0
    changed: dict[str, int] = {}
    examples: list[str] = []
    for items in _blocks(iter_batches(job, limit=limit), block):
        found = table.match(items)
        skip = found["skip"].fill_null(False)
        marks.append(_mark(items))
        stored = found["request"]
        rows = stored.is_not_null().arg_true()
        if not rows.is_empty():
            sent = request_keys(
                [
                    build_request(api, items[n], params[items[n].variant], job.endpoint.betas)[1]
                    for n in rows
                ]
            )
            differs = rows.filter(sent != stored.gather(rows))
            for n in differs:
                item = items[n]
                changed[item.variant] = changed.get(item.variant, 0) + 1
                if len(examples) < _EXAMPLES:
                    examples.append(f"{item.id!r} (sample {item.sample})")
            if rerun_changed and differs.len():
                skip = skip.scatter(differs, False)
        flags.append(skip)
        again += int((~found["skip"]).sum())  # a row, not done: sent again (nulls: no row)
        if rerun_changed:
            again += int(found["skip"].gather(rows).filter(~skip.gather(rows)).sum())
    if changed and not rerun_changed:
        raise JobError(_refusal(job, run_dir, changed, examples))
    done = pl.concat(flags) if flags else pl.Series(dtype=pl.Boolean)
    return Done(done, marks, again=again, changed=changed, block=block)


def _refusal(job: Job, run_dir: Path, changed: dict[str, int], examples: list[str]) -> str:
    """Why the folder's rows cannot be resumed: which variants' requests changed, and the
    three ways on."""
    count = sum(changed.values())
    which = ""
    if job.variants:
        which = " in " + ", ".join(
            f"{job.variant(name).shown}: {n}" for name, n in sorted(changed.items())
        )
    return (
        f"{job.path}: the run folder {run_dir} holds results of a different job: {count} "
        f"request(s) would now be sent differently (model, prompt, max_tokens or input "
        f"changed){which}; e.g. {', '.join(examples)}. Run with --rerun-changed to send just "
        "those again (their rows are replaced; their earlier attempts stay in "
        "attempts.parquet), run with --fresh to start over, or set output.dir to a new folder."
    )


def _skip_rule(
    job: Job, run_dir: Path, index: pl.DataFrame, retry_errors: bool, key_hash: KeyHash
) -> pl.DataFrame:
    """``index`` with ``skip``: the rows that count as done. ``ok`` rows are; ``error`` rows
    are unless ``retry_errors``, or the error was transient (overload, rate limit, 5xx, a
    connection error, a timeout, a broken stream: the same request may pass now); only a
    permanent error (400, 413, ...) is kept. Which is which is the API's ``classify``."""
    if retry_errors:
        skip = pl.col("ok")
    elif index["ok"].all():
        skip = pl.lit(True)
    else:
        errors = (
            scan_table(run_dir, "results", key_hash=key_hash)
            .filter(pl.col("status") != "ok")
            .select(*_KEY, "error_type", "error_message", "http_status")
            .collect(engine="streaming")
        )
        classify = job.request.api_spec.classify
        transient = [
            kind in _CLIENT_TRANSIENT
            or isinstance(classify(kind or "", message or "", http_status=status), RetryableError)
            for kind, message, status in errors.select(
                "error_type", "error_message", "http_status"
            ).iter_rows()
        ]
        index = index.join(
            errors.select(*_KEY, pl.Series("transient", transient, dtype=pl.Boolean)),
            on=_KEY,
            how="left",
        )
        skip = pl.col("ok") | ~pl.col("transient").fill_null(False)
    return index.select("_hash", *_KEY, "request", skip.alias("skip"))


async def pending_items(job: Job, limit: int | None, done: Done) -> AsyncIterator[RequestItem]:
    """Stream the input in batches, read and filtered off the event loop, skipping what is
    already done."""
    batches = done.filter(job, iter_batches(job, limit=limit))
    while (batch := await asyncio.to_thread(next, batches, None)) is not None:
        for item in batch:
            yield item
