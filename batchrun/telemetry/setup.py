"""Observability, configured once: structlog for logs, OpenTelemetry for traces and metrics.

Other modules call ``structlog.get_logger()`` and use the :class:`Telemetry` the run hands
them; this is the only place that chooses renderers, processors, levels and exporters. Logs go
to stderr (stdout carries only what a command is asked to print): JSON lines when stderr is not
a terminal, a readable console format when it is (``--log-format`` decides instead when given);
every line inside a request carries its ``trace_id`` and ``span_id``. How much is shown
(``-q``, ``-v``) is decided here too, and whether a live progress line belongs on the terminal
(:class:`LogDisplay`): at normal verbosity, readable lines leave out single requests' detail,
which the live line counts. ``telemetry.traces`` picks the exporter for spans and metrics
alike: ``file`` (OTLP JSON lines in the run folder), ``otlp`` (OTLP/HTTP, configured by the
standard ``OTEL_*`` variables), ``console`` (stderr) or ``none``. Nothing here ever sees a
request header. Server text is scrubbed of the run's secrets where it enters; log lines are
scrubbed once more here (:func:`scrubbed_logs`), in case some other path carries one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import structlog
from opentelemetry import trace

import batchrun

if TYPE_CHECKING:
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = [
    "NORMAL",
    "QUIET",
    "VERBOSE",
    "Instruments",
    "LogDisplay",
    "Telemetry",
    "configure_logging",
    "log_display",
    "scrubbed_logs",
    "setup_telemetry",
    "telemetry_for_run",
]

_METRIC_INTERVAL_MS = 10_000
_scrubs: list[Callable[[str], str]] = []  # of the runs whose clients are open


QUIET, NORMAL, VERBOSE = -1, 0, 1
# Bound by call/request.py around one request: lines carrying them are that request's detail.
_REQUEST_KEYS = ("id", "sample")


@dataclass(frozen=True, slots=True)
class LogDisplay:
    """How the command line asked to show a run: ``verbosity`` (:data:`QUIET`, :data:`NORMAL`,
    :data:`VERBOSE`) and ``console`` (readable lines, ``False`` for JSON lines, ``None`` when
    nothing was configured: the stream decides)."""

    verbosity: int = NORMAL
    console: bool | None = None

    def live_progress(self, stream: TextIO) -> bool:
        """Whether a live progress line belongs on ``stream``: a terminal showing readable
        lines, not asked to be quiet."""
        return self.verbosity > QUIET and self.console is not False and stream.isatty()


_display = LogDisplay()


def log_display() -> LogDisplay:
    """What the last :func:`configure_logging` chose (the defaults before any)."""
    return _display


def configure_logging(
    *,
    stream: TextIO | None = None,
    json_lines: bool | None = None,
    verbosity: int = NORMAL,
) -> None:
    """Send structlog output to stderr (or ``stream``), as JSON unless it is a terminal.

    ``json_lines`` overrides the terminal detection (``--log-format``). ``verbosity`` picks
    what is shown: :data:`QUIET` errors only; :data:`VERBOSE` everything, debug included;
    :data:`NORMAL` info and above, except that readable (console) lines leave out the detail
    of single requests (lines logged while a request's ``id`` is bound: retries, a row's
    failure, the budget's reaction to one response) below error: the live progress line
    counts them instead. JSON lines at :data:`NORMAL` carry them, as they always have.

    The stream is looked up at every line, not once: a live progress display that redirects
    stderr then prints log lines above itself instead of being garbled by them.
    """
    global _display
    target = stream or sys.stderr
    if json_lines is None:
        json_lines = not target.isatty()
    _display = LogDisplay(verbosity, console=not json_lines)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_lines
        else structlog.dev.ConsoleRenderer(
            colors=target.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    level = {QUIET: logging.ERROR, VERBOSE: logging.DEBUG}.get(verbosity, logging.INFO)
    detail: list[Any] = [] if json_lines or verbosity >= VERBOSE else [_drop_request_detail]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            *detail,
            _add_span_ids,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _scrub_secrets,  # after format_exc_info: a --debug traceback is scrubbed too
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=lambda *args: structlog.PrintLogger(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )


def _drop_request_detail(
    _: Any, method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if method not in ("error", "critical", "exception") and all(
        key in event for key in _REQUEST_KEYS
    ):
        raise structlog.DropEvent
    return event


@contextlib.contextmanager
def scrubbed_logs(scrub: Callable[[str], str]) -> Iterator[None]:
    """While inside, every string value of every log line passes through ``scrub``."""
    _scrubs.append(scrub)
    try:
        yield
    finally:
        _scrubs.remove(scrub)


def _scrub_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for scrub in _scrubs:
        for key, value in event.items():
            if isinstance(value, str):
                event[key] = scrub(value)
    return event


def _add_span_ids(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event.setdefault("span_id", format(ctx.span_id, "016x"))
    return event


@dataclass(frozen=True)
class Instruments:
    """The metrics batchrun records (OpenTelemetry GenAI client conventions, plus two)."""

    duration: metrics.Histogram
    tokens: metrics.Histogram
    ttft: metrics.Histogram
    per_chunk: metrics.Histogram
    retries: metrics.Counter
    errors: metrics.Counter

    @classmethod
    def create(cls, meter: metrics.Meter) -> Instruments:
        return cls(
            duration=meter.create_histogram(
                "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration"
            ),
            tokens=meter.create_histogram(
                "gen_ai.client.token.usage", unit="{token}", description="Tokens used"
            ),
            ttft=meter.create_histogram(
                "gen_ai.client.operation.time_to_first_chunk",
                unit="s",
                description="Time from sending the request to the first content chunk",
            ),
            per_chunk=meter.create_histogram(
                "gen_ai.client.operation.time_per_output_chunk",
                unit="s",
                description="Time between consecutive content chunks",
            ),
            retries=meter.create_counter(
                "batchrun.client.retries", unit="{attempt}", description="Attempts retried"
            ),
            errors=meter.create_counter(
                "batchrun.client.errors", unit="{request}", description="Requests that failed"
            ),
        )


class Telemetry:
    """A run's tracer and meter, with their exporters; ``shutdown`` flushes everything."""

    def __init__(self, tracer_provider: TracerProvider, meter_provider: MeterProvider) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        version = batchrun.__version__
        self.tracer = tracer_provider.get_tracer("batchrun", version)
        self.instruments = Instruments.create(meter_provider.get_meter("batchrun", version))

    def flush(self) -> None:
        self.tracer_provider.force_flush()
        self.meter_provider.force_flush()

    def shutdown(self) -> None:
        """Flush and close the exporters (the SDK's at-exit hook is not relied on)."""
        self.flush()
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def setup_telemetry(
    traces: str,
    *,
    job_name: str,
    run_dir: Path,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
) -> Telemetry:
    """Exporters for ``telemetry.traces``; tests pass in-memory ones instead."""
    # The SDK loads here, not at import: `batchrun validate` and `--help` never need it.
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes: dict[str, Any] = {"service.version": batchrun.__version__, "batchrun.job": job_name}
    if not os.environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = "batchrun"
    resource = Resource.create(attributes)
    tracer_provider = TracerProvider(resource=resource)
    readers: list[MetricReader] = []
    if span_exporter is None:
        span_exporter, metric_exporter = _exporters(traces, run_dir)
        if metric_exporter is not None:
            readers.append(
                PeriodicExportingMetricReader(
                    metric_exporter, export_interval_millis=_METRIC_INTERVAL_MS
                )
            )
    if span_exporter is not None:
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    if metric_reader is not None:
        readers.append(metric_reader)
    return Telemetry(tracer_provider, MeterProvider(resource=resource, metric_readers=readers))


def _exporters(traces: str, run_dir: Path) -> tuple[SpanExporter | None, MetricExporter | None]:
    if traces == "file":
        from batchrun.telemetry.otlp.file import OtlpJsonMetricFile, OtlpJsonSpanFile

        return (
            OtlpJsonSpanFile(run_dir / "traces.jsonl"),
            OtlpJsonMetricFile(run_dir / "metrics.jsonl"),
        )
    if traces == "otlp":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(), OTLPMetricExporter()
    if traces == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stderr), ConsoleMetricExporter(out=sys.stderr)
    return None, None


def telemetry_for_run(
    stack: contextlib.ExitStack,
    given: Telemetry | None,
    *,
    traces: str,
    job_name: str,
    run_dir: Path,
) -> Telemetry:
    """The run's telemetry: the job's exporters, shut down when ``stack`` closes; or the
    caller's (tests pass in-memory ones), flushed then and left open."""
    if given is not None:
        stack.callback(given.flush)
        return given
    made = setup_telemetry(traces, job_name=job_name, run_dir=run_dir)
    stack.callback(made.shutdown)
    return made
