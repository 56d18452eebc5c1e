"""Batch mode's record step for whole batches: results (or their absence) into Parquet parts.

:class:`Recorder` reads an ended batch's JSON-lines results as they stream in, settles each
against the batch's index (``rows.settle``), and hands the rows to the run's
:class:`~batchrun.record.parquet.ResultsWriter`, flushing checkpoint parts as it goes and once
more at the end, so the rows are on disk before the caller marks the batch collected. A request the
results leave out is a retryable ``missing_result``; lines for unknown or repeated custom ids
are ignored. It must not change the batch state or send anything.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from batchrun.apis import Api
from batchrun.batch.api import BatchesAPI, parse_time
from batchrun.batch.entries import Entry
from batchrun.batch.rows import BatchTimes, settle
from batchrun.batch.state import BatchRecord, iter_entries
from batchrun.clock import Clock
from batchrun.errors import AttemptError
from batchrun.job.prices import CacheRates
from batchrun.record.parquet import ResultsWriter
from batchrun.record.response_cache import ResponseCache

__all__ = ["FLUSH_ROWS", "Recorder", "times_of"]

FLUSH_ROWS = 5_000  # rows buffered while reading results before a checkpoint part


def times_of(record: BatchRecord, batch: dict[str, Any], now: datetime) -> BatchTimes:
    """What the rows of ``record``'s batch share; ``now`` stands in for times not known."""
    created = parse_time(batch.get("created_at")) or parse_time(record.created_at)
    return BatchTimes(record.request_id, created or now, parse_time(batch.get("ended_at")) or now)


@dataclass
class Recorder:
    """Turns batch outcomes into rows of one run; counts the rows by status."""

    writer: ResultsWriter
    run_id: str
    api: Api
    max_attempts: int
    clock: Clock
    # Per variant: its model and that model's batch rates (for each row's cost_usd).
    models: Mapping[str, tuple[str, CacheRates | None]]
    rows: dict[str, int] = field(default_factory=lambda: {"ok": 0, "error": 0})
    cache: ResponseCache | None = None  # ok rows are stored in it (read_write)
    cache_key: Callable[[Entry], str] | None = None

    def record(
        self, result: Any, entry: Entry, times: BatchTimes, *, may_retry: bool
    ) -> Entry | None:
        """Queue ``entry``'s rows; the entry itself when it is to be sent again instead."""
        # A variant no longer in the job (its batch sent by an earlier run): no price known.
        model, rates = self.models.get(entry.variant, (None, None))
        settled = settle(
            result,
            entry,
            run_id=self.run_id,
            api=self.api,
            model=model,
            times=times,
            may_retry=may_retry and entry.attempt < self.max_attempts,
            clock=self.clock,
            rates=rates,
        )
        if settled.result is None:
            self.writer.add_attempts([settled.attempt])
            return entry
        self.writer.add(settled.result, [settled.attempt])
        self.rows[settled.result["status"]] += 1
        if settled.result["status"] == "ok" and self.cache is not None and self.cache_key:
            # On the loop, unlike stream mode: one short insert, and no stream is being timed.
            self.cache.put(self.cache_key(entry), settled.result)
        return None

    async def results(
        self,
        api: BatchesAPI,
        run_dir: Path,
        record: BatchRecord,
        batch: dict[str, Any],
        *,
        may_retry: bool,
        now: datetime,
    ) -> list[Entry]:
        """Record an ended batch's results; returns the entries to send again."""
        index = await asyncio.to_thread(
            lambda: {e.custom_id: e for e in iter_entries(run_dir, record)}
        )
        times = times_of(record, batch, now)
        retries: list[Entry] = []
        seen: set[str] = set()
        async with contextlib.aclosing(api.results(batch)) as lines:
            async for line in lines:
                custom_id = line.get("custom_id")
                entry = index.get(custom_id) if isinstance(custom_id, str) else None
                if entry is None or entry.custom_id in seen:
                    continue
                seen.add(entry.custom_id)
                again = self.record(line.get("result"), entry, times, may_retry=may_retry)
                retries += [again] if again else []
                if self.writer.pending >= FLUSH_ROWS:
                    await self.flush()
        for custom_id, entry in index.items():
            if custom_id not in seen:
                again = self.record(None, entry, times, may_retry=may_retry)
                retries += [again] if again else []
        await self.flush()
        return retries

    async def errors(self, entries: list[Entry], error: AttemptError, times: BatchTimes) -> None:
        """Record ``error`` (not retried) as the outcome of every entry."""
        for entry in entries:
            self.record(error, entry, times, may_retry=False)
        await self.flush()

    async def flush(self) -> None:
        await asyncio.to_thread(self.writer.write_part, self.writer.take())
