"""Stage 3's driver for batch mode: a run's pending requests through the Message Batches API.

Handed an open run by :mod:`batchrun.run` (its folder locked, resume planned, client, writer
and telemetry open), :class:`BatchMode` adds what batch mode keeps beside the run folder's
rows: the batches (``batch/`` state), which requests are still in one, how a batch run ends
(collected, canceled, nothing to cancel), and what run.json gains (the batches). It has no
lifecycle of its own, and does not talk to the API itself (``session`` and ``api`` do).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.trace import Span

from batchrun.batch.api import BatchesAPI
from batchrun.batch.entries import BatchLimits
from batchrun.batch.session import Session
from batchrun.batch.state import (
    BatchRecord,
    BatchState,
    clear_batch_state,
    clear_cancel,
    iter_entries,
    iter_wires,
    load_state,
)
from batchrun.call.endpoint import ApiClient
from batchrun.clock import Clock, Sleep
from batchrun.errors import EXIT_OK, EXIT_ROW_ERRORS, JobError
from batchrun.job.schema import Job
from batchrun.models import RequestItem, RunStatus, Stop
from batchrun.record.parquet import ResultsWriter
from batchrun.record.response_cache import open_cache
from batchrun.schedule.spend import SpendLedger
from batchrun.telemetry.setup import Telemetry

__all__ = ["BatchMode"]


@dataclass
class BatchMode:
    """Batch mode's part of one run; ``cancel``: cancel the folder's open batches instead of
    sending, and collect what they finished."""

    job: Job
    clock: Clock
    sleep: Sleep
    stop: Stop
    limits: BatchLimits = field(default_factory=BatchLimits)
    cancel: bool = False
    grace_s: float | None = None  # batches are followed, not cut off: no grace period
    interrupted_note = "batches keep running on the API; run the job again to collect them"
    state: BatchState = field(default_factory=BatchState)
    session: Session | None = None
    _busy: set[tuple[str, str, int]] = field(default_factory=set)
    _nothing_to_cancel: bool = False
    spend: SpendLedger = field(default_factory=SpendLedger)  # the cap, at batch prices

    def check(self, run_dir: Path, fresh: bool) -> None:
        """Read the folder's batches, writing nothing; refuse ``--fresh`` while one may still
        be running (its results would be lost)."""
        self.state = load_state(run_dir)
        if fresh and self.state.unfinished():
            raise JobError(_still_open(run_dir, self.state, "--fresh would lose their results"))

    def prepare(self, run_dir: Path, fresh: bool) -> None:
        """Before the resume plan: :meth:`check`, then ``--fresh`` forgets the batches."""
        self.check(run_dir, fresh)
        if fresh:
            clear_batch_state(run_dir)
            self.state = BatchState()
        if not self.cancel:
            clear_cancel(run_dir)
        self._nothing_to_cancel = self.cancel and not self.state.unfinished()

    async def in_flight(self, run_dir: Path) -> set[tuple[str, str, int]]:
        """(variant, id, sample) of every request in a batch not collected yet: never sent
        again."""
        self._busy = await asyncio.to_thread(_in_flight, run_dir, self.state)
        return self._busy

    def started(self) -> dict[str, Any]:
        return {"mode": "batch", "in_batches": len(self._busy)}

    async def drive(
        self,
        *,
        run_dir: Path,
        run_id: str,
        client: ApiClient,
        writer: ResultsWriter,
        items: AsyncIterator[RequestItem],
        telemetry: Telemetry,
        run_span: Span,
        todo: int,
    ) -> None:
        """Submit what is pending (unless canceling), then follow every batch to its end.
        (A batch has no per-request spans: ``telemetry`` keeps the run's span only.)"""
        self.session = Session(
            job=self.job,
            run_dir=run_dir,
            run_id=run_id,
            api=BatchesAPI(client, self.job.request.api_spec),
            writer=writer,
            state=self.state,
            clock=self.clock,
            sleep=self.sleep,
            limits=self.limits,
            stop=self.stop,
            canceling=self.cancel,
            spend=self.spend,
            cache=open_cache(self.job.cache, self.job.base_dir),
        )
        if self.spend.cap_usd is not None:  # batches still out hold their worst case
            self.spend.held_usd += await asyncio.to_thread(
                _held, run_dir, self.state, self.spend, self.job
            )
        try:
            if not self.cancel:
                await self.session.submit(items)
            await self.session.drive()
        finally:
            if self.session.cache is not None:
                self.session.cache.close()

    @property
    def sent(self) -> int:
        return self.session.sent if self.session is not None else 0

    def interrupted_message(self) -> str:
        return (
            f"{len(self.state.unfinished())} batch(es) still running on the API: run the job "
            "again to collect them"
        )

    def ending(self, counts: dict[str, int], requests: int) -> tuple[RunStatus, int, str | None]:
        """How a run that was neither aborted nor interrupted ended."""
        rows = counts.get("ok", 0) + counts.get("error", 0)
        failed = bool(counts.get("error")) or rows < requests
        if self._nothing_to_cancel:
            code = EXIT_ROW_ERRORS if failed else EXIT_OK
            status = RunStatus.COMPLETE if rows >= requests else RunStatus.CANCELED
            return status, code, "nothing to cancel"
        if self.session is not None and self.session.canceling:
            unsent = max(0, requests - rows)
            code = EXIT_ROW_ERRORS if failed else EXIT_OK
            return RunStatus.CANCELED, code, f"canceled; {unsent} unsent"
        return RunStatus.COMPLETE, EXIT_ROW_ERRORS if counts.get("error") else EXIT_OK, None

    def span_attributes(self) -> dict[str, Any]:
        return {"batchrun.batches": self.session.created if self.session is not None else 0}

    def finished(self) -> dict[str, Any]:
        return {"batches_created": self.session.created if self.session is not None else 0}

    def manifest(self) -> dict[str, Any]:
        return {"batches": [_describe(record) for record in self.state.records]}


def _in_flight(run_dir: Path, state: BatchState) -> set[tuple[str, str, int]]:
    return {
        (e.variant, e.id, e.sample) for r in state.unfinished() for e in iter_entries(run_dir, r)
    }


def _held(run_dir: Path, state: BatchState, spend: SpendLedger, job: Job) -> float:
    """The worst case of every request in a batch not collected yet (each at its variant's
    price)."""
    api = job.request.api_spec
    return sum(
        spend.worst_case(api, json.loads(wire)["params"], entry.variant)
        for record in state.unfinished()
        for entry, wire in zip(
            iter_entries(run_dir, record), iter_wires(run_dir, record), strict=True
        )
    )


def _still_open(run_dir: Path, state: BatchState, consequence: str) -> str:
    ids = [r.id or f"#{r.seq} (not confirmed)" for r in state.unfinished()]
    return (
        f"{run_dir}: {len(ids)} batch(es) may still be running on the API ({', '.join(ids[:3])}"
        f"{', ...' if len(ids) > 3 else ''}); {consequence}. Run the job again to collect them, "
        "or with --cancel to cancel them first"
    )


def _describe(record: BatchRecord) -> dict[str, Any]:
    return {
        "seq": record.seq,
        "id": record.id,
        "status": record.status,
        "requests": record.count,
        "processing_status": record.processing_status,
        "request_counts": record.request_counts,
        "created_at": record.created_at,
        "ended_at": record.ended_at,
        "error": record.error,
    }
