"""The composition root: one run lifecycle for both modes, wiring load → schedule → call → record.

:func:`run_job` opens a run (input check, the folder's lock, the resume plan, the run id, the
endpoint and client, the writer, telemetry and the run's span, signals), hands it to the mode's
driver (:class:`~batchrun.call.stream.StreamMode` or :class:`~batchrun.batch.driver.BatchMode`)
and closes it (final files, manifest, summary, exit code). It is the only module that knows
every stage; it decides nothing about a single request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

import httpx
import polars as pl
import structlog
from opentelemetry.trace import Span

from batchrun.call.checkpoints import WRITE_RETRY_S
from batchrun.call.endpoint import ApiClient, base_url, http_client
from batchrun.call.reachability import UNREACHABLE_WINDOW_S
from batchrun.call.stream import StreamMode
from batchrun.clock import Clock, Sleep
from batchrun.errors import (
    EXIT_CAPPED,
    EXIT_FATAL,
    EXIT_IOERR,
    EXIT_OK,
    EXIT_ROW_ERRORS,
    EXIT_UNAVAILABLE,
    SIGNAL_EXIT,
    FatalAPIError,
    JobError,
    JudgingStopped,
    RunFolderError,
    RunLockedError,
)
from batchrun.job.schema import Job
from batchrun.load.inputs import count_rows
from batchrun.load.resume import pending_items
from batchrun.models import RequestItem, RunOutcome, RunStatus, Stop
from batchrun.preflight import preflight
from batchrun.record.cost import cost_text
from batchrun.record.folder import compact, translated
from batchrun.record.manifest import manifest
from batchrun.record.parquet import ResultsWriter, scan_table, write_json_atomic
from batchrun.record.rundir import new_run_id
from batchrun.schedule.spend import (
    REPLACED,
    SpendLedger,
    folder_spent,
    judges_spent,
    replaced_spent,
    rows_spent,
)
from batchrun.shard.folders import merged_from
from batchrun.telemetry.setup import Telemetry, telemetry_for_run

if TYPE_CHECKING:
    from batchrun.batch.entries import BatchLimits

__all__ = ["RunOutcome", "cancel_job", "run_job"]

log = structlog.get_logger()


class Mode(Protocol):
    """What a mode's driver adds to the one run lifecycle."""

    interrupted_note: str  # logged when a signal stops the run

    @property
    def grace_s(self) -> float | None:
        """After a signal, how long requests in flight may finish (``None``: no grace)."""
        ...

    def check(self, run_dir: Path, fresh: bool) -> None:
        """What :meth:`prepare` would refuse, found without writing (``batchrun validate``)."""
        ...

    def prepare(self, run_dir: Path, fresh: bool) -> None:
        """Under the lock, before the resume plan: the mode's own state in the run folder."""
        ...

    async def in_flight(self, run_dir: Path) -> set[tuple[str, str, int]]:
        """Requests sent by an earlier process and not collected yet: not to send again."""
        ...

    def started(self) -> dict[str, Any]: ...

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
        """Send what ``items`` holds until done or ``stop``; may raise FatalAPIError."""
        ...

    @property
    def sent(self) -> int: ...

    def interrupted_message(self) -> str | None: ...

    def ending(
        self, counts: dict[str, int], requests: int
    ) -> tuple[RunStatus, int, str | None]: ...

    def span_attributes(self) -> dict[str, Any]: ...

    def finished(self) -> dict[str, Any]: ...

    def manifest(self) -> dict[str, Any]: ...


async def run_job(
    job: Job,
    *,
    limit: int | None = None,
    fresh: bool = False,
    retry_errors: bool = False,
    rerun_changed: bool = False,
    grace_s: float = 10.0,
    cancel: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock | None = None,
    sleep: Sleep = asyncio.sleep,
    progress_stream: TextIO | None = None,
    telemetry: Telemetry | None = None,
    batch_limits: BatchLimits | None = None,
    write_retry_s: float = WRITE_RETRY_S,
    unreachable_s: float = UNREACHABLE_WINDOW_S,
) -> RunOutcome:
    """Run ``job`` to the end (or to an abort or a signal) and return how it ended.

    Resumes what an earlier run left in the run folder unless ``fresh``; rows that ended in
    ``error`` are sent again only with ``retry_errors``; rows whose request the job now asks
    differently refuse the folder (JobError), or with ``rerun_changed`` are sent again and
    replaced. On SIGINT/SIGTERM no new request starts
    and (stream mode) requests in flight get ``grace_s`` to finish. Batch mode picks up the
    batches an earlier process left running; ``cancel`` cancels them instead of sending, and
    ``batch_limits`` (requests and bytes per batch) default to the API's. ``transport``
    replaces httpx's network transport; ``clock`` and ``sleep`` make time injectable, down to
    the rate budget; ``telemetry`` replaces the exporters the job asks for (tests pass
    in-memory ones).

    A checkpoint that cannot be written stops new requests; after ``write_retry_s`` of failed
    tries the run ends with exit 74, as it does when compaction or run.json cannot be written
    (an entry of the folder of the wrong kind is refused before sending, raising
    :class:`RunFolderError`). When no attempt reaches the endpoint for ``unreachable_s``
    (stream mode), the run ends with exit 69 and records nothing of the rows in flight.
    """
    clock = clock or Clock()
    started = clock.now()
    stop = Stop()

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

    def on_capped() -> None:
        log.warning("batchrun.run.capped", cap_usd=job.limits.max_cost_usd)
        stop.event.set()

    spend = SpendLedger.for_job(job, on_capped, halted=stop.event.is_set)
    mode: Mode
    if job.request.mode == "batch":
        from batchrun.batch import BatchLimits, BatchMode  # loaded only when a job asks for it

        mode = BatchMode(
            job, clock, sleep, stop, batch_limits or BatchLimits(), cancel, spend=spend
        )
    else:
        mode = StreamMode(
            job,
            clock,
            sleep,
            stop,
            on_fatal,
            grace_s,
            progress_stream,
            write_retry_s=write_retry_s,
            unreachable_s=unreachable_s,
            spend=spend,
        )
    async with preflight(
        job,
        mode,
        now=clock.wall(started),
        limit=limit,
        fresh=fresh,
        retry_errors=retry_errors,
        rerun_changed=rerun_changed,
    ) as plan:  # the checks `batchrun validate` makes too; the folder's lock held from here
        summary, key, run_dir, done = plan.summary, plan.key, plan.run_dir, plan.done
        if spend.cap_usd is not None:
            spend.spent_usd = await asyncio.to_thread(folder_spent, job, run_dir)
        # Rows this run sends again replace rows that were paid for: what those cost is kept.
        before = await asyncio.to_thread(rows_spent, job, run_dir) if done.again else 0.0
        # A limit the input's end came before left nothing out: no need to count the rest. An
        # input that cannot be counted past the limit (total None) was cut by it all the same.
        total = summary.rows if limit is None or summary.rows < limit else count_rows(job)
        limited = total is None or summary.rows < total
        options = {
            "limit": limit,
            "fresh": fresh,
            "retry_errors": retry_errors,
            "rerun_changed": rerun_changed,
        }
        run_id = new_run_id(clock.wall(started))
        structlog.contextvars.bind_contextvars(run_id=run_id)
        log.info(
            "batchrun.run.started",
            job=job.name,
            **mode.started(),
            run_dir=str(run_dir),
            requests=summary.requests,
            already_done=len(done),
        )
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
            with translated(run_dir, "creating its parts folder"):
                writer = ResultsWriter(run_dir)
            async with http_client(job, url, key, transport) as client:
                with _signals(stop, mode):
                    try:
                        await mode.drive(
                            run_dir=run_dir,
                            run_id=run_id,
                            client=client,
                            writer=writer,
                            items=pending_items(job, limit, done),
                            telemetry=telemetry,
                            run_span=run_span,
                            todo=summary.requests - len(done),
                        )
                    except FatalAPIError as exc:
                        on_fatal(exc)
            counts = await compact(writer, stop)
            left = _rows_left(counts, summary.requests)
            replaced = 0.0
            if done.again and stop.write_failed is None:
                after = await asyncio.to_thread(rows_spent, job, run_dir)
                mine = await asyncio.to_thread(rows_spent, job, run_dir, run_id)
                replaced = max(0.0, round(before + mine - after, 6))
            if spend.cap_usd is not None and stop.write_failed is None:
                # What the folder holds now: batch rows are priced only when collected.
                spend.spent_usd = await asyncio.to_thread(folder_spent, job, run_dir)
                spend.spent_usd += replaced
                recorded = await asyncio.to_thread(_recorded, run_dir, run_id)
                left = max(left, summary.requests - len(done) - recorded)
            finished = clock.now()
            status, code, message = _ending(stop, mode, counts, summary.requests, spend, left)
            run_span.set_attributes(
                {
                    "batchrun.status": status,
                    "batchrun.rows.ok": counts.get("ok", 0),
                    "batchrun.rows.error": counts.get("error", 0),
                    "batchrun.sent": mode.sent,
                    **mode.span_attributes(),
                }
            )
            run_span.end(end_time=clock.epoch_ns(finished))
        cost: str | None = None
        if stop.write_failed is None:
            record = manifest(
                job,
                run_dir,
                run_id,
                clock,
                started,
                finished,
                status,
                counts,
                summary,
                message,
                options=options,
                input_rows_total=total,
                limited=limited,
            )
            cost = cost_text(record["cost"])
            try:
                with translated(run_dir, "writing run.json"):
                    if spend.cap_usd is not None:
                        record["spend"] = spend.summary(left)
                    record.update(merged_from(run_dir))  # a merged folder run on: its origin
                    if carried := round(replaced_spent(run_dir) + replaced, 6):
                        record[REPLACED] = carried
                    write_json_atomic(run_dir / "run.json", {**record, **mode.manifest()})
            except RunFolderError as exc:
                stop.write_failed = exc
                status, code, message = RunStatus.WRITE_FAILED, EXIT_IOERR, str(exc)
    log.info(
        "batchrun.run.finished",
        status=status,
        exit_code=code,
        **counts,
        sent=mode.sent,
        **mode.finished(),
        duration_s=round(finished - started, 3),
        results=str(run_dir / "results.parquet"),
        **({"cost": cost} if cost else {}),
    )
    structlog.contextvars.unbind_contextvars("run_id")
    if job.scorers and code in (EXIT_OK, EXIT_ROW_ERRORS):  # a finished run: score what it made
        from batchrun.score import score_run

        try:
            await score_run(job, run_dir, transport=transport)
        except JudgingStopped as exc:  # the results stand; the scores wait for `batchrun score`
            log.error("batchrun.score.stopped", error=str(exc), exit_code=exc.exit_code)
            code, message = exc.exit_code, f"scoring stopped: {exc}"
    if job.scorers and cost is not None:  # a capped run's too: its folder's earlier judging
        judged = await asyncio.to_thread(judges_spent, job, run_dir)
        if judged:  # the cap counts the judges: so does the closing line
            cost += f"; judges ${judged:,.6f}"
    return RunOutcome(
        run_dir,
        run_id,
        counts,
        code,
        status,
        message,
        mode.sent,
        input_rows=summary.rows,
        input_rows_total=total,
        limited=limited,
        cost=cost,
    )


async def cancel_job(
    job: Job,
    *,
    limit: int | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: Sleep = asyncio.sleep,
) -> RunOutcome:
    """``--cancel``: cancel the open batches of ``job``'s run folder, whoever runs it.

    When no process holds the folder, the cancel is a run of its own: it cancels, waits for the
    batches to end and collects what they finished. When a run holds it, that run is asked to
    cancel (:func:`~batchrun.batch.cancel.ask_holder`) and the outcome has status
    ``cancel_requested`` and exit code 0.
    """
    if job.request.mode != "batch":
        raise JobError(
            f"{job.path}: --cancel applies to batch mode (request.mode: batch); this job "
            "streams its requests, and a stream run is stopped with Ctrl-C or SIGTERM"
        )
    try:
        return await run_job(job, limit=limit, cancel=True, transport=transport, sleep=sleep)
    except RunLockedError:
        from batchrun.batch.cancel import ask_holder

        return await ask_holder(job, transport=transport)


@contextlib.contextmanager
def _signals(stop: Stop, mode: Mode) -> Iterator[None]:
    """SIGINT/SIGTERM stop the run: no new requests, and requests in flight get the mode's
    grace period; a second signal exits at once (every file on disk is whole, never torn)."""
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.signal is not None:
            os._exit(SIGNAL_EXIT[sig])
        stop.signal = sig
        extra = {"grace_s": mode.grace_s} if mode.grace_s is not None else {}
        log.warning(
            "batchrun.run.interrupted", signal=sig.name, **extra, note=mode.interrupted_note
        )
        stop.event.set()
        stop.interrupted.set()

    restore = catch_signals(loop, on_signal)
    try:
        yield
    finally:
        restore()


def catch_signals(
    loop: asyncio.AbstractEventLoop, on_signal: Callable[[signal.Signals], None]
) -> Callable[[], None]:
    """Have ``on_signal(sig)`` run on ``loop`` for SIGINT and SIGTERM; returns the undo.

    Not ``loop.add_signal_handler``: that learns of a signal from a byte in the loop's wakeup
    pipe, and under load the pipe can be full (every async generator the garbage collector
    finalises writes a byte to it; httpx leaves three per streamed response), and then the
    signal is lost: a SIGTERM at 800 requests/s did nothing. A Python signal handler always
    runs, in the main thread, and schedules the call itself.
    """
    previous: dict[signal.Signals, Any] = {}

    def handler(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(on_signal, signal.Signals(signum))

    for sig in SIGNAL_EXIT:
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def _rows_left(counts: dict[str, int], requests: int) -> int:
    """Requests of the run with no row in the folder."""
    return max(0, requests - sum(counts.values()))


def _recorded(run_dir: Path, run_id: str) -> int:
    """The rows this run recorded: with the ones it was to send (``--rerun-changed``, transient
    errors, ``--retry-errors``: rows the folder had), the requests a capped run left."""
    if not (run_dir / "results.parquet").exists():
        return 0
    rows = scan_table(run_dir, "results").filter(pl.col("run_id") == run_id)
    return int(rows.select(pl.len()).collect().item())


def _ending(
    stop: Stop, mode: Mode, counts: dict[str, int], requests: int, spend: SpendLedger, left: int
) -> tuple[RunStatus, int, str | None]:
    """The run's status, exit code and closing message (``left``: the requests not sent)."""
    if stop.write_failed is not None:
        return RunStatus.WRITE_FAILED, EXIT_IOERR, str(stop.write_failed)
    if stop.unreachable is not None:
        return RunStatus.UNREACHABLE, EXIT_UNAVAILABLE, str(stop.unreachable)
    if stop.fatal is not None:
        exc = stop.fatal
        return RunStatus.ABORTED, EXIT_FATAL, f"aborted: {exc} ({exc.hint})"
    if stop.signal is not None:
        note = mode.interrupted_message()
        message = f"interrupted by {stop.signal.name}" + (f"; {note}" if note else "")
        return RunStatus.INTERRUPTED, SIGNAL_EXIT[stop.signal], message
    if spend.capped:
        return RunStatus.CAPPED, EXIT_CAPPED, spend.message(left)
    return mode.ending(counts, requests)
