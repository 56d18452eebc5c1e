"""The composition root: wires load → schedule → call (with retries) → record for one job.

``run_job`` is the only function that knows every stage. It takes the run folder's lock, plans
the resume (``rundir``), opens the client (``endpoint``), starts the simulator when the job asks
for ``sim``, sets up telemetry and the budget, handles signals and decides the exit code
(``outcome``). Requests themselves are
``worker.process``'s; this module decides nothing about a single request.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any, TextIO

import httpx
import structlog

from batchrun.call.endpoint import api_key, base_url, http_client
from batchrun.call.retry import Sleep
from batchrun.call.stream import RunContext, process
from batchrun.clock import Clock
from batchrun.errors import FatalAPIError
from batchrun.job.schema import Job
from batchrun.load.inputs import check_input
from batchrun.load.resume import pending_items, resume_plan
from batchrun.models import RequestItem
from batchrun.outcome import (
    EXIT_FATAL,
    EXIT_OK,
    EXIT_ROW_ERRORS,
    SIGNAL_EXIT,
    RunOutcome,
    Stop,
    catch_signals,
    fatal_hint,
)
from batchrun.record.lock import RunLock
from batchrun.record.manifest import manifest
from batchrun.record.parquet import ResultsWriter, write_json_atomic
from batchrun.record.rundir import clear, make_run_dir, new_run_id
from batchrun.schedule.limits import Budget, CountTokens, RateBudget, make_budget
from batchrun.schedule.pool import run_pool
from batchrun.telemetry.progress import Progress
from batchrun.telemetry.setup import Telemetry, telemetry_for_run

__all__ = ["RunOutcome", "run_job"]

log = structlog.get_logger()

_FLUSH_EVERY_S = 0.2  # at most this much finished work is lost to a kill -9


async def run_job(
    job: Job,
    *,
    limit: int | None = None,
    fresh: bool = False,
    retry_errors: bool = False,
    grace_s: float = 10.0,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock | None = None,
    sleep: Sleep = asyncio.sleep,
    budget: Budget | None = None,
    progress_stream: TextIO | None = None,
    telemetry: Telemetry | None = None,
) -> RunOutcome:
    """Run ``job`` to the end (or to an abort or a signal) and return how it ended.

    Resumes what an earlier run left in the run folder unless ``fresh``; rows that ended in
    ``error`` are sent again only with ``retry_errors``. On SIGINT/SIGTERM no new request starts
    and requests in flight get ``grace_s`` to finish. ``transport`` replaces httpx's network
    transport; ``clock`` and ``sleep`` make time injectable; ``telemetry`` replaces the
    exporters the job asks for (tests pass in-memory ones).
    """
    if job.request.mode == "batch":
        from batchrun.batch import run_batch_job  # imported only when a job asks for it

        return await run_batch_job(
            job,
            limit=limit,
            fresh=fresh,
            retry_errors=retry_errors,
            transport=transport,
            clock=clock,
            sleep=sleep,
            telemetry=telemetry,
        )
    summary = check_input(job, limit=limit)
    clock = clock or Clock()
    started = clock.now()
    key = api_key(job)
    run_dir = make_run_dir(job.run_dir(clock.wall(started)))
    with RunLock(run_dir):
        if fresh:
            clear(run_dir)
        done = await asyncio.to_thread(resume_plan, job, run_dir, limit, retry_errors)
        run_id = new_run_id(clock.wall(started))
        structlog.contextvars.bind_contextvars(run_id=run_id)
        todo = summary.requests - len(done)
        log.info(
            "batchrun.run.started",
            job=job.name,
            run_dir=str(run_dir),
            requests=summary.requests,
            already_done=len(done),
        )
        stop = Stop()
        with contextlib.ExitStack() as stack:
            url = base_url(job, stack)
            telemetry = telemetry_for_run(
                stack, telemetry, traces=job.telemetry.traces, job_name=job.name, run_dir=run_dir
            )
            run_span = telemetry.tracer.start_span(
                "batchrun.run",
                start_time=clock.epoch_ns(started),
                attributes={
                    "batchrun.job": job.name,
                    "batchrun.run_id": run_id,
                    "batchrun.requests": summary.requests,
                    "batchrun.already_done": len(done),
                },
            )
            writer = ResultsWriter(run_dir)
            async with http_client(job, url, key, transport) as client:
                if budget is None:
                    budget = _budget(job, key, url, client)
                progress = Progress(
                    total=todo, stream=progress_stream or sys.stderr, limits=budget.snapshot
                )

                def on_fatal(exc: FatalAPIError) -> None:
                    if stop.fatal is None:
                        stop.fatal = exc
                        log.error(
                            "batchrun.run.aborting",
                            error_type=exc.error_type,
                            error=exc.message,
                            http_status=exc.http_status,
                        )
                    stop.event.set()

                ctx = RunContext(
                    job=job,
                    run_id=run_id,
                    client=client,
                    writer=writer,
                    clock=clock,
                    sleep=sleep,
                    budget=budget,
                    progress=progress,
                    telemetry=telemetry,
                    run_span=run_span.get_span_context(),
                    on_fatal=on_fatal,
                )
                try:
                    await _dispatch(ctx, pending_items(job, limit, done), stop, grace_s)
                finally:
                    await budget.aclose()
            counts = await asyncio.to_thread(writer.finalize)
            finished = clock.now()
            status, code, message = _ending(stop, counts)
            run_span.set_attributes(
                {
                    "batchrun.status": status,
                    "batchrun.rows.ok": counts.get("ok", 0),
                    "batchrun.rows.error": counts.get("error", 0),
                    "batchrun.sent": progress.done,
                }
            )
            run_span.end(end_time=clock.epoch_ns(finished))
        write_json_atomic(
            run_dir / "run.json",
            manifest(
                job, run_dir, run_id, clock, started, finished, status, counts, summary, message
            ),
        )
    log.info(
        "batchrun.run.finished",
        status=status,
        exit_code=code,
        **counts,
        sent=progress.done,
        duration_s=round(finished - started, 3),
        results=str(run_dir / "results.parquet"),
    )
    structlog.contextvars.unbind_contextvars("run_id")
    return RunOutcome(run_dir, run_id, counts, code, status, message, progress.done)


async def _dispatch(
    ctx: RunContext, items: AsyncIterator[RequestItem], stop: Stop, grace_s: float
) -> None:
    """Run every item through the pool, flushing checkpoints, until done or stopped."""
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

    def on_signal(sig: signal.Signals) -> None:
        if stop.signal is not None:
            # A second signal: leave at once. Checkpoints on disk are whole files, never torn.
            os._exit(SIGNAL_EXIT[sig])
        stop.signal = sig
        log.warning(
            "batchrun.run.interrupted",
            signal=sig.name,
            grace_s=grace_s,
            note="no new requests; those in flight may finish; send again to exit at once",
        )
        stop.event.set()
        loop.call_later(grace_s, pool.cancel)

    restore = catch_signals(loop, on_signal)

    finished = asyncio.Event()

    async def flush_periodically() -> None:
        # Never cancelled mid-write: a part being written when the run ends must be on disk
        # before finalize reads (and then removes) the parts.
        while not finished.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), _FLUSH_EVERY_S)
            if ctx.writer.pending:
                await asyncio.to_thread(ctx.writer.write_part, ctx.writer.take())

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
        ctx.progress.stop()
        finished.set()
        await asyncio.shield(flusher)
        restore()


def _budget(job: Job, key: str, url: str, client: httpx.AsyncClient) -> RateBudget:
    """The run's budget; shared with other runs on this host that use the same key and URL."""
    limits = job.limits
    if job.endpoint.base_url == "sim":
        limits = limits.model_copy(update={"shared": False})  # a private, throwaway server
    fingerprint = hashlib.sha256(f"{key}\n{url}".encode()).hexdigest()
    return make_budget(
        limits,
        key_fingerprint=fingerprint,
        max_concurrency=limits.concurrency,
        max_wait_s=job.retry.max_backoff_s,
        count_tokens=_token_counter(client),
    )


def _token_counter(client: httpx.AsyncClient) -> CountTokens:
    """``/v1/messages/count_tokens``, for exact input-token budgets."""

    async def count(body: dict[str, Any]) -> int:
        response = await client.post("/v1/messages/count_tokens", json=body)
        response.raise_for_status()
        return int(response.json()["input_tokens"])

    return count


def _ending(stop: Stop, counts: dict[str, int]) -> tuple[str, int, str | None]:
    if stop.fatal is not None:
        exc = stop.fatal
        return "aborted", EXIT_FATAL, f"aborted: {exc} ({fatal_hint(exc)})"
    if stop.signal is not None:
        return "interrupted", SIGNAL_EXIT[stop.signal], f"interrupted by {stop.signal.name}"
    return "complete", EXIT_ROW_ERRORS if counts.get("error") else EXIT_OK, None
