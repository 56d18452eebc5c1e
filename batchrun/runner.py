"""The composition root: wires load → schedule → call (with retries) → record for one job.

``run_job`` is the only function that knows every stage. It owns the httpx client (auth headers,
timeouts, transport), the simulator when the job asks for ``sim``, the run folder, signals and
the exit code. Per-request failures become ``error`` rows here; only a fatal API error (exit 3),
a signal (130/143) or an invalid job (exit 2, raised as JobError) end a run early.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import platform
import secrets
import shutil
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import structlog
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from batchrun import __version__, apis
from batchrun.client import stream_attempt
from batchrun.clock import Clock
from batchrun.errors import AttemptError, FatalAPIError, JobError, RetryableError
from batchrun.inputs import InputSummary, check_input, iter_batches
from batchrun.job import Job
from batchrun.limits import Budget, Unlimited
from batchrun.pool import run_pool
from batchrun.progress import Progress
from batchrun.records import Attempt, RequestItem
from batchrun.results import ResultsWriter, done_keys, write_json_atomic
from batchrun.retry import RetryPolicy, Sleep
from batchrun.sim import SimServer
from batchrun.telemetry import make_tracer_provider, trace_id_hex

__all__ = ["RunOutcome", "run_job"]

log = structlog.get_logger()

EXIT_OK, EXIT_ROW_ERRORS, EXIT_FATAL = 0, 1, 3
_SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}
_FLUSH_EVERY_S = 2.0


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How a run ended: where its files are, its counts and the process exit code."""

    run_dir: Path
    run_id: str
    counts: dict[str, int]
    exit_code: int
    status: str  # complete | aborted | interrupted
    message: str | None = None


@dataclass
class _Run:
    """State shared by the workers of one run."""

    job: Job
    run_id: str
    client: httpx.AsyncClient
    writer: ResultsWriter
    policy_sleep: Sleep
    clock: Clock
    budget: Budget
    progress: Progress
    tracer: trace.Tracer
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    fatal: FatalAPIError | None = None
    flush_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def flush(self) -> None:
        async with self.flush_lock:
            rows = self.writer.take()
            await asyncio.to_thread(self.writer.write_part, rows)


async def run_job(
    job: Job,
    *,
    limit: int | None = None,
    fresh: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    clock: Clock | None = None,
    sleep: Sleep = asyncio.sleep,
    budget: Budget | None = None,
    progress_stream: Any = None,
) -> RunOutcome:
    """Run ``job`` to the end (or to an abort or a signal) and return how it ended.

    ``transport`` replaces httpx's network transport (tests pass the simulator's or a mock's);
    ``clock`` and ``sleep`` make time injectable.
    """
    summary = check_input(job, limit=limit)
    clock = clock or Clock()
    started = clock.now()
    api_key = _api_key(job)
    run_dir = job.run_dir(clock.wall(started))
    _prepare_run_dir(run_dir, fresh=fresh)
    done: set[tuple[str, int]] = set() if fresh else done_keys(run_dir)
    run_id = f"{clock.wall(started):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"
    structlog.contextvars.bind_contextvars(run_id=run_id)
    log.info(
        "batchrun.run.started",
        job=job.name,
        run_dir=str(run_dir),
        requests=summary.requests,
        already_done=len(done),
    )

    with contextlib.ExitStack() as stack:
        base_url = job.endpoint.base_url
        if base_url == "sim":
            base_url = stack.enter_context(SimServer(job.sim)).base_url
        provider = make_tracer_provider(job.name)
        stack.callback(provider.shutdown)
        todo = summary.requests - len(done)
        progress = Progress(total=todo, **({"stream": progress_stream} if progress_stream else {}))
        async with _client(job, base_url, api_key, transport) as client:
            run = _Run(
                job=job,
                run_id=run_id,
                client=client,
                writer=ResultsWriter(run_dir),
                policy_sleep=sleep,
                clock=clock,
                budget=budget or Unlimited(),
                progress=progress,
                tracer=provider.get_tracer("batchrun"),
            )
            received = await _run_pool(run, _items(job, limit, done), summary.requests)
        counts = await asyncio.to_thread(run.writer.finalize)
    finished = clock.now()
    status, code, message = _ending(run, received, counts)
    write_json_atomic(
        run_dir / "run.json",
        _manifest(job, run_id, clock, started, finished, status, counts, summary, message),
    )
    log.info(
        "batchrun.run.finished",
        status=status,
        exit_code=code,
        **counts,
        duration_s=round(finished - started, 3),
        results=str(run_dir / "results.parquet"),
    )
    structlog.contextvars.unbind_contextvars("run_id")
    return RunOutcome(run_dir, run_id, counts, code, status, message)


async def _run_pool(run: _Run, items: AsyncIterator[RequestItem], total: int) -> int | None:
    """Run every item through the pool; return the signal that stopped it, if one did."""
    received: list[int] = []
    loop = asyncio.get_running_loop()
    installed = []
    for sig in _SIGNAL_EXIT:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, _on_signal, run, sig, received)
            installed.append(sig)

    async def flush_periodically() -> None:
        while True:
            await asyncio.sleep(_FLUSH_EVERY_S)
            await run.flush()

    flusher = asyncio.create_task(flush_periodically())
    run.progress.start()
    try:
        await run_pool(
            items,
            lambda item, queued_at: _request(run, item, queued_at),
            concurrency=run.job.limits.concurrency,
            stop=run.stop,
            clock=run.clock.now,
        )
    finally:
        run.progress.stop()
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        for sig in installed:
            loop.remove_signal_handler(sig)
    return received[0] if received else None


def _on_signal(run: _Run, sig: signal.Signals, received: list[int]) -> None:
    if received:
        # A second signal: leave at once. Checkpoints on disk are whole files, never torn.
        os._exit(_SIGNAL_EXIT[sig])
    received.append(sig)
    log.warning(
        "batchrun.run.interrupted",
        signal=sig.name,
        note="finishing requests in flight; send again to exit at once",
    )
    run.stop.set()


async def _items(
    job: Job, limit: int | None, done: set[tuple[str, int]]
) -> AsyncIterator[RequestItem]:
    """Stream the input in batches, read off the event loop, skipping what is already done."""
    batches: Iterator[list[RequestItem]] = iter_batches(job, limit=limit)
    while (batch := await asyncio.to_thread(next, batches, None)) is not None:
        for item in batch:
            if (item.id, item.sample) not in done:
                yield item


async def _request(run: _Run, item: RequestItem, queued_at: float) -> None:
    """One request through all its attempts, recorded as one result row and its attempt rows."""
    job = run.job
    req = job.request
    body = apis.build_body(
        req.api,
        item,
        model=req.model,
        max_tokens=req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        stop_sequences=req.stop_sequences,
    )
    operation = "chat" if req.api == "messages" else "text_completion"
    attempts: list[dict[str, Any]] = []
    final: Attempt | None = None
    first_sent: float | None = None
    retry_wait = 0.0

    with run.tracer.start_as_current_span(
        f"{operation} {req.model}",
        kind=SpanKind.CLIENT,
        context=trace.set_span_in_context(trace.INVALID_SPAN),
        attributes={
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": "anthropic",
            "gen_ai.request.model": req.model,
            "gen_ai.request.max_tokens": req.max_tokens,
            "batchrun.id": item.id,
            "batchrun.sample": item.sample,
        },
    ) as span:
        trace_id = trace_id_hex(span)
        with structlog.contextvars.bound_contextvars(
            id=item.id, sample=item.sample, trace_id=trace_id
        ):

            async def attempt_once(number: int, backoff_s: float) -> Attempt:
                nonlocal final, first_sent, retry_wait
                retry_wait += backoff_s
                await run.budget.acquire(body)
                with run.tracer.start_as_current_span(f"attempt {number}") as attempt_span:
                    result = await stream_attempt(
                        run.client, req.api, body, total_s=job.timeouts.total_s, clock=run.clock
                    )
                    if result.http_status is not None:
                        attempt_span.set_attribute("http.response.status_code", result.http_status)
                    if result.error is not None:
                        attempt_span.set_attribute("error.type", result.error.error_type)
                run.budget.settle(body, result.output_tokens_seen)
                if first_sent is None:
                    first_sent = result.sent_at
                final = result
                attempts.append(_attempt_row(run, item, number, backoff_s, result))
                if result.error is not None:
                    raise result.error
                return result

            def on_retry(exc: RetryableError, wait_s: float, next_attempt: int) -> None:
                run.progress.retry()
                log.info(
                    "batchrun.request.retry_scheduled",
                    error_type=exc.error_type,
                    error=exc.message,
                    http_status=exc.http_status,
                    wait_s=round(wait_s, 3),
                    next_attempt=next_attempt,
                )

            policy = RetryPolicy(
                max_attempts=job.retry.max_attempts,
                initial_backoff_s=job.retry.initial_backoff_s,
                max_backoff_s=job.retry.max_backoff_s,
                sleep=run.policy_sleep,
                on_retry=on_retry,
            )
            error: AttemptError | None = None
            try:
                await policy.call(attempt_once)
            except FatalAPIError as exc:
                # No request can succeed: stop dispatching, and leave this row unrecorded so a
                # run after the fix sends it.
                run.writer.add_attempts(attempts)
                if run.fatal is None:
                    run.fatal = exc
                    log.error(
                        "batchrun.run.aborting",
                        error_type=exc.error_type,
                        error=exc.message,
                        http_status=exc.http_status,
                    )
                run.stop.set()
                return
            except AttemptError as exc:
                error = exc
                log.warning(
                    "batchrun.request.failed",
                    error_type=exc.error_type,
                    error=exc.message,
                    http_status=exc.http_status,
                    attempts=len(attempts),
                )
            assert final is not None
            assert first_sent is not None
            if error is not None:
                span.set_attribute("error.type", error.error_type)
            row = _result_row(
                run,
                item,
                final,
                error,
                attempts=len(attempts),
                queue_s=first_sent - queued_at,
                retry_wait_s=retry_wait,
                first_sent=first_sent,
                trace_id=trace_id,
            )
    run.writer.add(row, attempts)
    run.progress.update(ok=error is None, output_tokens=row["output_tokens"])
    if run.writer.should_flush():
        await run.flush()


def _attempt_row(
    run: _Run, item: RequestItem, number: int, backoff_s: float, a: Attempt
) -> dict[str, Any]:
    err = a.error
    return {
        "run_id": run.run_id,
        "id": item.id,
        "sample": item.sample,
        "attempt": number,
        "outcome": "ok" if err is None else err.error_type,
        "http_status": a.http_status,
        "request_id": a.request_id,
        "started_at": run.clock.wall(a.sent_at),
        "finished_at": run.clock.wall(a.ended_at),
        "backoff_s": backoff_s,
        "ttft_s": a.ttft_s,
        "output_tokens_seen": a.output_tokens_seen,
        "retry_after_s": err.retry_after if err is not None else None,
        "error_message": err.message if err is not None else None,
    }


def _result_row(
    run: _Run,
    item: RequestItem,
    final: Attempt,
    error: AttemptError | None,
    *,
    attempts: int,
    queue_s: float,
    retry_wait_s: float,
    first_sent: float,
    trace_id: str,
) -> dict[str, Any]:
    req = run.job.request
    row: dict[str, Any] = {
        "run_id": run.run_id,
        "id": item.id,
        "sample": item.sample,
        "model": req.model,
        "api": req.api,
        "status": "ok" if error is None else "error",
        "completion": None,
        "content_json": None,
        "stop_reason": None,
        "stop_sequence": None,
        "input_tokens": None,
        "output_tokens": None,
        "error_type": None if error is None else error.error_type,
        "error_message": None if error is None else error.message,
        "http_status": final.http_status,
        "attempts": attempts,
        "request_id": final.request_id,
        "started_at": run.clock.wall(first_sent),
        "finished_at": run.clock.wall(final.ended_at),
        "queue_s": max(0.0, queue_s),
        "retry_wait_s": retry_wait_s,
        "ttft_s": None,
        "e2e_s": None,
        "tpot_s": None,
        "output_tokens_per_s": None,
        "chunk_offsets_s": None,
        "trace_id": trace_id,
    }
    done = final.completion
    if error is None and done is not None:
        offsets = final.chunk_offsets
        out = done.output_tokens
        e2e = final.e2e_s
        row.update(
            completion=done.text,
            content_json=done.content_json,
            stop_reason=done.stop_reason,
            stop_sequence=done.stop_sequence,
            input_tokens=done.input_tokens,
            output_tokens=out,
            ttft_s=final.ttft_s,
            e2e_s=e2e,
            chunk_offsets_s=offsets,
            tpot_s=(offsets[-1] - offsets[0]) / (out - 1)
            if out is not None and out >= 2 and offsets
            else None,
            output_tokens_per_s=out / e2e if out is not None and e2e > 0 else None,
        )
    return row


def _ending(run: _Run, received: int | None, counts: dict[str, int]) -> tuple[str, int, str | None]:
    if run.fatal is not None:
        exc = run.fatal
        return "aborted", EXIT_FATAL, f"aborted: {exc} ({_fatal_hint(exc)})"
    if received is not None:
        return "interrupted", _SIGNAL_EXIT[signal.Signals(received)], "interrupted by a signal"
    return "complete", EXIT_ROW_ERRORS if counts.get("error") else EXIT_OK, None


def _fatal_hint(exc: FatalAPIError) -> str:
    if exc.http_status == 401 or exc.error_type == "authentication_error":
        return "check the API key in the environment variable the job names"
    if exc.http_status == 403 or exc.error_type == "permission_error":
        return "the key has no permission for this model or endpoint"
    if exc.http_status == 402 or exc.error_type == "billing_error":
        return "check the organisation's billing"
    if exc.error_type == "not_found_error":
        return "check request.model"
    return "the spending limit is reached; raise it or wait"


def _api_key(job: Job) -> str:
    name = job.endpoint.api_key_env
    key = os.environ.get(name, "")
    if key.strip():
        return key.strip()
    if job.endpoint.base_url == "sim":
        return "sim-key"
    raise JobError(
        f"{job.path}: endpoint.api_key_env: the environment variable {name} is "
        f"{'empty' if name in os.environ else 'not set'}; export {name}=... with "
        "your API key (or use base_url: sim to run on the built-in simulator)"
    )


def _prepare_run_dir(run_dir: Path, *, fresh: bool) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(run_dir, 0o700)
    except OSError as exc:
        raise JobError(
            f"output.dir: cannot create the run folder {run_dir}: {exc.strerror}"
        ) from exc
    if fresh:
        for name in ("results.parquet", "attempts.parquet", "run.json"):
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "parts", ignore_errors=True)


@contextlib.asynccontextmanager
async def _client(
    job: Job, base_url: str, api_key: str, transport: httpx.AsyncBaseTransport | None
) -> AsyncIterator[httpx.AsyncClient]:
    t = job.timeouts
    concurrency = job.limits.concurrency
    async with httpx.AsyncClient(
        base_url=base_url,
        headers={
            "x-api-key": api_key,
            "anthropic-version": job.endpoint.anthropic_version,
            "content-type": "application/json",
            "user-agent": f"batchrun/{__version__}",
        },
        timeout=httpx.Timeout(connect=t.connect_s, read=t.idle_s, write=t.idle_s, pool=None),
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        transport=transport,
    ) as client:
        yield client


def _manifest(
    job: Job,
    run_id: str,
    clock: Clock,
    started: float,
    finished: float,
    status: str,
    counts: dict[str, int],
    summary: InputSummary,
    message: str | None,
) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "status": status,
        "complete": status == "complete",
        "message": message,
        "started_at": clock.wall(started),
        "finished_at": clock.wall(finished),
        "duration_s": round(finished - started, 3),
        "counts": {"ok": counts.get("ok", 0), "error": counts.get("error", 0)},
        "requests": summary.requests,
        "input_rows": summary.rows,
        "job": job.resolved(),
        "job_sha256": hashlib.sha256(job.path.read_bytes()).hexdigest(),
        "versions": {
            "batchrun": __version__,
            "python": platform.python_version(),
            **{name: version(name) for name in ("httpx", "polars", "tenacity")},
        },
    }
