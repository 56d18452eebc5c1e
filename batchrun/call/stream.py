"""Stage 3's driver for stream mode: every pending request through the pool, with checkpoints.

Handed an open run by :mod:`batchrun.run` (its folder locked, resume planned, client, writer
and telemetry open), :class:`StreamMode` sets up the rate budget and the progress line and runs
each request (:func:`~batchrun.call.request.process`) in the bounded pool, writing the finished
rows as checkpoint parts every :data:`FLUSH_EVERY_S`; once the run is interrupted, what is still
in flight is cancelled after the grace period. It opens and closes nothing of the run: the lock,
the writer's final files, the manifest and the exit code are the run's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import structlog
from opentelemetry.trace import Span

from batchrun.call.endpoint import ApiClient
from batchrun.call.request import StreamContext, process
from batchrun.clock import Clock, Sleep
from batchrun.errors import EXIT_OK, EXIT_ROW_ERRORS, FatalAPIError
from batchrun.job.schema import Job
from batchrun.models import RequestItem, RunStatus, Stop
from batchrun.record.parquet import ResultsWriter
from batchrun.schedule.limits import CountTokens, RateBudget, make_budget
from batchrun.schedule.pool import run_pool
from batchrun.telemetry.genai import RequestTelemetry
from batchrun.telemetry.progress import Progress
from batchrun.telemetry.setup import Telemetry

__all__ = ["FLUSH_EVERY_S", "StreamMode", "dispatch"]

log = structlog.get_logger()

FLUSH_EVERY_S = 0.2  # at most this much finished work is lost to a kill -9


async def dispatch(
    ctx: StreamContext,
    items: AsyncIterator[RequestItem],
    stop: Stop,
    *,
    grace_s: float,
) -> None:
    """Run every item through the pool, flushing checkpoints, until done or stopped.

    After ``stop.interrupted``, requests in flight get ``grace_s`` to finish; then they are
    cancelled and recorded nowhere, so the next run sends them again.
    """
    loop = asyncio.get_running_loop()
    pool = asyncio.create_task(
        run_pool(
            items,
            lambda item, queued_at: process(ctx, item, queued_at),
            concurrency=ctx.job.limits.concurrency,
            stop=stop.event,
            clock=ctx.clock.now,
        )
    )

    async def cut_off_after_grace() -> None:
        await stop.interrupted.wait()
        loop.call_later(grace_s, pool.cancel)

    finished = asyncio.Event()

    async def flush_periodically() -> None:
        # Never cancelled mid-write: a part being written when the run ends must be on disk
        # before finalize reads (and then removes) the parts.
        while not finished.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), FLUSH_EVERY_S)
            if ctx.writer.pending:
                await asyncio.to_thread(ctx.writer.write_part, ctx.writer.take())

    grace = asyncio.create_task(cut_off_after_grace())
    flusher = asyncio.create_task(flush_periodically())
    ctx.progress.start()
    # What exists now (modules, the job, the resume index) lives as long as the run: keep it
    # out of the collector's full passes, which otherwise stop the event loop for 50-100 ms
    # and make every stream being read then look slow.
    gc.freeze()
    try:
        await pool
    except asyncio.CancelledError:
        if stop.signal is None or asyncio.current_task().cancelling():  # type: ignore[union-attr]
            raise  # cancelled from outside, not by our grace period
        log.warning("batchrun.run.grace_expired", note="requests in flight will be resent")
    finally:
        gc.unfreeze()
        grace.cancel()
        ctx.progress.stop()
        finished.set()
        await asyncio.shield(flusher)


@dataclass
class StreamMode:
    """Stream mode's part of one run: requests in flight get ``grace_s`` after a signal."""

    job: Job
    clock: Clock
    sleep: Sleep
    stop: Stop
    on_fatal: Callable[[FatalAPIError], None]
    grace_s: float = 10.0
    progress_stream: TextIO | None = None
    interrupted_note = "no new requests; those in flight may finish; send again to exit at once"
    progress: Progress | None = None

    def prepare(self, run_dir: Path, fresh: bool) -> None:
        """Nothing of its own in the run folder."""

    async def in_flight(self, run_dir: Path) -> set[tuple[str, int]]:
        return set()  # a request in flight when a run ended was never recorded: send it again

    def started(self) -> dict[str, Any]:
        return {}

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
        budget = _budget(self.job, client, self.clock, self.sleep)
        self.progress = Progress(
            total=todo, stream=self.progress_stream or sys.stderr, limits=budget.snapshot
        )
        ctx = StreamContext(
            job=self.job,
            run_id=run_id,
            client=client,
            writer=writer,
            clock=self.clock,
            sleep=self.sleep,
            budget=budget,
            progress=self.progress,
            telemetry=RequestTelemetry(
                self.job, telemetry, run_span.get_span_context(), self.clock
            ),
            on_fatal=self.on_fatal,
        )
        try:
            await dispatch(ctx, items, self.stop, grace_s=self.grace_s)
        finally:
            await budget.aclose()

    @property
    def sent(self) -> int:
        return self.progress.done if self.progress is not None else 0

    def interrupted_message(self) -> str | None:
        return None

    def ending(self, counts: dict[str, int], requests: int) -> tuple[RunStatus, int, str | None]:
        """How a run that was neither aborted nor interrupted ended."""
        return RunStatus.COMPLETE, EXIT_ROW_ERRORS if counts.get("error") else EXIT_OK, None

    def span_attributes(self) -> dict[str, Any]:
        return {}

    def finished(self) -> dict[str, Any]:
        return {}

    def manifest(self) -> dict[str, Any]:
        return {}


def _budget(job: Job, client: ApiClient, clock: Clock, sleep: Sleep) -> RateBudget:
    """The run's budget; shared with other runs on this host that use the same key and URL."""
    limits = job.limits
    if job.endpoint.base_url == "sim":
        limits = limits.model_copy(update={"shared": False})  # a private, throwaway server
    return make_budget(
        limits,
        key_fingerprint=client.fingerprint,
        cost=job.request.api_spec,
        max_concurrency=limits.concurrency,
        clock=clock.monotonic,
        sleep=sleep,
        max_wait_s=job.retry.max_backoff_s,
        count_tokens=_token_counter(client, job.request.api_spec.count_tokens_path),
    )


def _token_counter(client: ApiClient, path: str | None) -> CountTokens | None:
    """The API's token counting endpoint, for exact input-token budgets; ``None`` without one."""
    if path is None:
        return None

    async def count(body: dict[str, Any]) -> int:
        response = await client.post(path, json=body)
        response.raise_for_status()
        return int(response.json()["input_tokens"])

    return count
