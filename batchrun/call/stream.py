"""Stage 3's driver for stream mode: every pending request through the pool, with checkpoints.

Handed an open run by :mod:`batchrun.run` (its folder locked, resume planned, client, writer
and telemetry open), :class:`StreamMode` sets up the rate budget and the progress line and runs
each request (:func:`~batchrun.call.request.process`) in the bounded pool, writing the finished
rows as checkpoint parts (:mod:`batchrun.call.checkpoints`); once the run is interrupted, what
is still in flight is cancelled after the grace period, and at once when the endpoint cannot be
reached (:mod:`batchrun.call.reachability`). It opens and closes nothing of the run: the lock,
the writer's final files, the manifest and the exit code are the run's.
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import structlog
from opentelemetry.trace import Span

from batchrun.call.checkpoints import FLUSH_EVERY_S, WRITE_RETRY_S, Checkpoints
from batchrun.call.endpoint import ApiClient
from batchrun.call.reachability import UNREACHABLE_WINDOW_S, Reachability
from batchrun.call.request import StreamContext, process
from batchrun.clock import Clock, Sleep
from batchrun.errors import (
    EXIT_OK,
    EXIT_ROW_ERRORS,
    EndpointUnreachable,
    FatalAPIError,
    RunFolderError,
)
from batchrun.job.schema import Job
from batchrun.models import RequestItem, RunStatus, Stop
from batchrun.record.folder import Stateless
from batchrun.record.parquet import ResultsWriter
from batchrun.record.response_cache import ResponseCache, open_cache
from batchrun.schedule.limits import CountTokens, RateBudget, make_budget
from batchrun.schedule.pool import run_pool
from batchrun.schedule.spend import SpendLedger
from batchrun.telemetry.genai import RequestTelemetry
from batchrun.telemetry.progress import Progress
from batchrun.telemetry.setup import Telemetry

__all__ = ["FLUSH_EVERY_S", "StreamMode", "dispatch"]

log = structlog.get_logger()


async def dispatch(
    ctx: StreamContext,
    items: AsyncIterator[RequestItem],
    stop: Stop,
    *,
    grace_s: float,
    write_retry_s: float = WRITE_RETRY_S,
) -> None:
    """Run every item through the pool, flushing checkpoints, until done or stopped.

    After ``stop.interrupted``, requests in flight get ``grace_s`` to finish; then they are
    cancelled and recorded nowhere, so the next run sends them again. So are they, at once,
    when the endpoint is found unreachable. While checkpoints cannot be written no request
    starts; after ``write_retry_s`` of failures the run stops (``stop.write_failed``).
    """
    loop = asyncio.get_running_loop()

    def write_failed(exc: RunFolderError) -> None:
        stop.write_failed = exc
        log.error("batchrun.run.write_failed", error=str(exc))
        stop.event.set()

    checkpoints = Checkpoints(
        ctx.writer, retry_s=write_retry_s, clock=ctx.clock.now, on_failed=write_failed
    )

    async def send(item: RequestItem, queued_at: float) -> None:
        if not checkpoints.writable.is_set():
            await _first_of(checkpoints.writable, stop.event)
            if stop.event.is_set():
                return  # never sent, never recorded: the next run sends it
        await process(ctx, item, queued_at)

    pool = asyncio.create_task(
        run_pool(
            items,
            send,
            concurrency=ctx.job.limits.concurrency,
            stop=stop.event,
            clock=ctx.clock.now,
        )
    )

    async def cut_off_after_grace() -> None:
        await stop.interrupted.wait()
        loop.call_later(grace_s, pool.cancel)

    async def watch_endpoint() -> None:
        # On a timer too: when every request is sleeping in backoff, no attempt ends to tell.
        tick = min(1.0, ctx.reach.window_s / 4)
        while not ctx.reach.down:
            await asyncio.sleep(tick)
            ctx.reach.check()
        pool.cancel()  # nothing in flight can get through: record none of it

    grace = asyncio.create_task(cut_off_after_grace())
    watcher = asyncio.create_task(watch_endpoint())
    flusher = asyncio.create_task(checkpoints.run())
    ctx.progress.start()
    # What exists now (modules, the job, the resume index) lives as long as the run: keep it
    # out of the collector's full passes, which otherwise stop the event loop for 50-100 ms
    # and make every stream being read then look slow.
    gc.freeze()
    # Streams make many short-lived objects that reference counting frees; a young pass every
    # 700 allocations cost the loop about a quarter of its time at 64 in flight (bench). Cycles
    # are still collected, less often.
    threshold = gc.get_threshold()
    gc.set_threshold(50_000, *threshold[1:])
    try:
        await pool
        # Rows held while the last attempts failed to reach the endpoint: the verdict comes
        # from the watcher (down) or a response still under way.
        await _first_of(ctx.reach.drained, stop.event)
    except asyncio.CancelledError:
        ours = stop.signal is not None or stop.unreachable is not None
        if not ours or asyncio.current_task().cancelling():  # type: ignore[union-attr]
            raise  # cancelled from outside, not by our grace period or the watcher
        if stop.unreachable is None:
            log.warning("batchrun.run.grace_expired", note="requests in flight will be resent")
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
        grace.cancel()
        watcher.cancel()
        ctx.progress.stop()
        checkpoints.finish(interrupted=stop.signal is not None)
        await asyncio.shield(flusher)


async def _first_of(*events: asyncio.Event) -> None:
    """Return when any of ``events`` is set."""
    waits = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


@dataclass
class StreamMode(Stateless):
    """Stream mode's part of one run: requests in flight get ``grace_s`` after a signal; a
    failing checkpoint write is tried for ``write_retry_s``; an endpoint no attempt reaches for
    ``unreachable_s`` stops the run."""

    job: Job
    clock: Clock
    sleep: Sleep
    stop: Stop
    on_fatal: Callable[[FatalAPIError], None]
    grace_s: float = 10.0
    progress_stream: TextIO | None = None
    write_retry_s: float = WRITE_RETRY_S
    unreachable_s: float = UNREACHABLE_WINDOW_S
    interrupted_note = "no new requests; those in flight may finish; send again to exit at once"
    progress: Progress | None = None
    spend: SpendLedger = field(default_factory=SpendLedger)  # the cap; default: none
    cache: ResponseCache | None = None

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
        self.cache = cache = open_cache(self.job.cache, self.job.base_dir)
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
            reach=Reachability(
                str(client.base_url),
                window_s=self.unreachable_s,
                clock=self.clock.now,
                on_down=self._unreachable,
            ),
            spend=self.spend,
            cache=cache,
        )
        try:
            await dispatch(
                ctx, items, self.stop, grace_s=self.grace_s, write_retry_s=self.write_retry_s
            )
        finally:
            await budget.aclose()
            if cache is not None:
                cache.close()

    def _unreachable(self, exc: EndpointUnreachable) -> None:
        self.stop.unreachable = exc
        log.error("batchrun.run.unreachable", url=exc.url, error=exc.error)
        self.stop.event.set()

    @property
    def sent(self) -> int:
        done = self.progress.done if self.progress is not None else 0
        return done - (self.cache.hits if self.cache is not None else 0)  # hits send nothing

    def interrupted_message(self) -> str | None:
        return None

    def ending(self, counts: dict[str, int], requests: int) -> tuple[RunStatus, int, str | None]:
        """How a run that was neither aborted nor interrupted ended."""
        return RunStatus.COMPLETE, EXIT_ROW_ERRORS if counts.get("error") else EXIT_OK, None

    def span_attributes(self) -> dict[str, Any]:
        return {}

    def finished(self) -> dict[str, Any]:
        return {"cache_hits": self.cache.hits} if self.cache is not None else {}

    def manifest(self) -> dict[str, Any]:
        return {}


def _budget(job: Job, client: ApiClient, clock: Clock, sleep: Sleep) -> RateBudget:
    """The run's budget, with buckets per model; each model's are shared with other runs on
    this host (or on every host, with ``limits.redis_url``) that use the same key, URL and
    model."""
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
