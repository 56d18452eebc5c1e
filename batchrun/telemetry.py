"""Observability, configured once: structlog for logs, OpenTelemetry for traces.

Other modules call ``structlog.get_logger()`` and ``tracer()``; this is the only place that
chooses renderers, processors and exporters. Logs go to stderr (stdout carries only what a
command is asked to print): JSON lines when stderr is not a terminal, a readable console format
when it is. Per-request context (``id``, ``sample``, ``attempt``, ``trace_id``) is bound with
contextvars by the runner.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from batchrun import __version__

__all__ = ["configure_logging", "make_tracer_provider"]


def configure_logging(*, stream: TextIO | None = None, json: bool | None = None) -> None:
    """Send structlog output to ``stream`` (stderr), as JSON unless it is a terminal."""
    stream = stream or sys.stderr
    if json is None:
        json = not stream.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def make_tracer_provider(job_name: str) -> TracerProvider:
    """A tracer provider for one run. Exporters are chosen by ``telemetry.traces`` (issue 5)."""
    resource = Resource.create(
        {"service.name": "batchrun", "service.version": __version__, "batchrun.job": job_name}
    )
    return TracerProvider(resource=resource)


def trace_id_hex(span: trace.Span) -> str:
    return format(span.get_span_context().trace_id, "032x")
