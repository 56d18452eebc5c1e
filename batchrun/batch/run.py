"""Batch mode's entry point: :func:`run_batch_job`, a run of a job with ``request.mode: batch``.

Everything around the batches is shared with stream mode, imported rather than copied: the
run folder and its lock, the resume plan and the input stream (``rundir``), the API key and the
HTTP client (``endpoint``), the outcome and exit codes (``outcome``).
This module adds the session's lifecycle (signals, the simulator, telemetry), the ending and
what run.json gains in batch mode: the cost estimate and the batches. It must not talk to the
API itself (``session`` and ``api`` do).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import structlog

from batchrun.batch.api import BatchesAPI
from batchrun.batch.entries import BatchLimits
from batchrun.batch.session import Session
from batchrun.batch.state import (
    BatchRecord,
    BatchState,
    clear_batch_state,
    clear_cancel,
    iter_entries,
    load_state,
)
from batchrun.call.endpoint import api_key, base_url, http_client
from batchrun.call.retry import Sleep
from batchrun.clock import Clock
from batchrun.errors import FatalAPIError, JobError
from batchrun.job.schema import Job
from batchrun.load import resume
from batchrun.load.inputs import InputSummary, check_input
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
from batchrun.record import manifest, rundir
from batchrun.record.lock import RunLock
from batchrun.record.parquet import ResultsWriter, write_json_atomic
from batchrun.telemetry.setup import Telemetry, telemetry_for_run

__all__ = ["run_batch_job"]

log = structlog.get_logger()


async def run_batch_job(
    job: Job,
    *,
    limit: int | None = None,
    fresh: bool = False,
    retry_errors: bool = False,
    cancel: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock | None = None,
    sleep: Sleep = asyncio.sleep,
    limits: BatchLimits | None = None,
    telemetry: Telemetry | None = None,
) -> RunOutcome:
    """Run ``job`` through the Message Batches API until every batch is collected, or stop.

    Resumes the run folder as stream mode does (``fresh``, ``retry_errors``), and picks up the
    batches an earlier process left running. ``cancel`` cancels the folder's open batches
    instead of sending anything, and collects what they finished. ``limits`` (requests and bytes
    per batch) default to the API's; ``sleep`` paces the polling; ``transport``, ``clock`` and
    ``telemetry`` as for :func:`~batchrun.runner.run_job`.
    """
    summary = check_input(job, limit=limit)
    clock = clock or Clock()
    started = clock.now()
    key = api_key(job)
    run_dir = rundir.make_run_dir(job.run_dir(clock.wall(started)))
    with RunLock(run_dir):
        state = load_state(run_dir)
        if fresh:
            if state.unfinished():
                raise JobError(_still_open(run_dir, state, "--fresh would lose their results"))
            rundir.clear(run_dir)
            clear_batch_state(run_dir)
            state = BatchState()
        if not cancel:
            clear_cancel(run_dir)
        done = await asyncio.to_thread(resume.resume_plan, job, run_dir, limit, retry_errors)
        busy = await asyncio.to_thread(_in_flight, run_dir, state)
        nothing_to_cancel = cancel and not state.unfinished()
        run_id = rundir.new_run_id(clock.wall(started))
        structlog.contextvars.bind_contextvars(run_id=run_id)
        log.info(
            "batchrun.run.started",
            job=job.name,
            mode="batch",
            run_dir=str(run_dir),
            requests=summary.requests,
            already_done=len(done),
            in_batches=len(busy),
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
                attributes={"batchrun.job": job.name, "batchrun.run_id": run_id},
            )
            writer = ResultsWriter(run_dir)
            async with http_client(job, url, key, transport) as client:
                session = Session(
                    job=job,
                    run_dir=run_dir,
                    run_id=run_id,
                    api=BatchesAPI(client),
                    writer=writer,
                    state=state,
                    clock=clock,
                    sleep=sleep,
                    limits=limits or BatchLimits(),
                    stop=stop,
                    canceling=cancel,
                )
                with _signals(stop):
                    try:
                        if not cancel:
                            await session.submit(resume.pending_items(job, limit, done.also(busy)))
                        await session.drive()
                    except FatalAPIError as exc:
                        stop.fatal = exc
                        log.error(
                            "batchrun.run.aborting",
                            error_type=exc.error_type,
                            error=exc.message,
                            http_status=exc.http_status,
                        )
            counts = await asyncio.to_thread(writer.finalize)
            finished = clock.now()
            status, code, message = _ending(stop, session, counts, summary, nothing_to_cancel)
            run_span.set_attributes(
                {"batchrun.status": status, "batchrun.batches": session.created}
            )
            run_span.end(end_time=clock.epoch_ns(finished))
        run_json = manifest.manifest(
            job, run_dir, run_id, clock, started, finished, status, counts, summary, message
        )
        run_json["batches"] = [_describe(record) for record in state.records]
        write_json_atomic(run_dir / "run.json", run_json)
    log.info(
        "batchrun.run.finished",
        status=status,
        exit_code=code,
        **counts,
        batches_created=session.created,
        duration_s=round(finished - started, 3),
        results=str(run_dir / "results.parquet"),
    )
    structlog.contextvars.unbind_contextvars("run_id")
    return RunOutcome(run_dir, run_id, counts, code, status, message, session.sent)


def _in_flight(run_dir: Path, state: BatchState) -> set[tuple[str, int]]:
    """(id, sample) of every request in a batch not collected yet: never sent again."""
    return {(e.id, e.sample) for r in state.unfinished() for e in iter_entries(run_dir, r)}


def _still_open(run_dir: Path, state: BatchState, consequence: str) -> str:
    ids = [r.id or f"#{r.seq} (not confirmed)" for r in state.unfinished()]
    return (
        f"{run_dir}: {len(ids)} batch(es) may still be running on the API ({', '.join(ids[:3])}"
        f"{', ...' if len(ids) > 3 else ''}); {consequence}. Run the job again to collect them, "
        "or with --cancel to cancel them first"
    )


@contextlib.contextmanager
def _signals(stop: Stop) -> Iterator[None]:
    """SIGINT/SIGTERM stop the session (batches keep running on the API); a second one exits."""
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.signal is not None:
            os._exit(SIGNAL_EXIT[sig])  # state and parts on disk are whole files, never torn
        stop.signal = sig
        log.warning(
            "batchrun.run.interrupted",
            signal=sig.name,
            note="batches keep running on the API; run the job again to collect them",
        )
        stop.event.set()

    restore = catch_signals(loop, on_signal)
    try:
        yield
    finally:
        restore()


def _ending(
    stop: Stop,
    session: Session,
    counts: dict[str, int],
    summary: InputSummary,
    nothing_to_cancel: bool,
) -> tuple[str, int, str | None]:
    if stop.fatal is not None:
        exc = stop.fatal
        return "aborted", EXIT_FATAL, f"aborted: {exc} ({fatal_hint(exc)})"
    if stop.signal is not None:
        return (
            "interrupted",
            SIGNAL_EXIT[stop.signal],
            f"interrupted by {stop.signal.name}; {len(session.state.unfinished())} batch(es) "
            "still running on the API: run the job again to collect them",
        )
    rows = counts.get("ok", 0) + counts.get("error", 0)
    failed = bool(counts.get("error")) or rows < summary.requests
    if nothing_to_cancel:
        code = EXIT_ROW_ERRORS if failed else EXIT_OK
        return "complete" if rows >= summary.requests else "canceled", code, "nothing to cancel"
    if session.canceling:
        unsent = max(0, summary.requests - rows)
        return "canceled", EXIT_ROW_ERRORS if failed else EXIT_OK, f"canceled; {unsent} unsent"
    return "complete", EXIT_ROW_ERRORS if counts.get("error") else EXIT_OK, None


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
