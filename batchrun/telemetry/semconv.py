"""The GenAI names batchrun gives what a request asks for and what its response used.

Part of :mod:`batchrun.telemetry`, used by :mod:`batchrun.telemetry.genai`: the request body's
``gen_ai.request.*`` attributes, the input count as the conventions define it for Anthropic, and
the newest experimental token metrics behind ``OTEL_SEMCONV_STABILITY_OPT_IN``. Pure: it reads
the environment once per run and records to the instruments it is given; nothing else.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from opentelemetry import metrics

from batchrun.models import Completion

__all__ = [
    "LatestInstruments",
    "latest_experimental",
    "record_latest",
    "request_attributes",
    "total_input_tokens",
]

OPT_IN_ENV = "OTEL_SEMCONV_STABILITY_OPT_IN"
LATEST = "gen_ai_latest_experimental"


def latest_experimental(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``OTEL_SEMCONV_STABILITY_OPT_IN`` (a comma-separated list) asks for the newest
    experimental GenAI conventions."""
    return LATEST in {v.strip() for v in environ.get(OPT_IN_ENV, "").split(",")}


class LatestInstruments:
    """The newest experimental GenAI token metrics (emitted only when opted in)."""

    def __init__(self, meter: metrics.Meter) -> None:
        def counter(name: str, description: str) -> metrics.Counter:
            return meter.create_counter(
                f"gen_ai.client.inference.usage.{name}", unit="{token}", description=description
            )

        self.usage = {
            "input": counter("input_tokens", "Input tokens, cached ones included"),
            "output": counter("output_tokens", "Output tokens, reasoning included"),
            "cache_read": counter("cache_read.input_tokens", "Input tokens read from the cache"),
            "cache_write": counter("cache_write.input_tokens", "Input tokens written to it"),
            "reasoning": counter("reasoning.output_tokens", "Output tokens of reasoning"),
        }
        self.operation = {
            kind: meter.create_histogram(
                f"gen_ai.client.inference.operation.{kind}_tokens",
                unit="{token}",
                description=f"{kind.capitalize()} tokens per operation",
            )
            for kind in ("input", "output")
        }


def total_input_tokens(done: Completion) -> int | None:
    """The input as the conventions count it for Anthropic: the API's ``input_tokens`` (the
    uncached part) plus cache reads plus cache writes; ``None`` when no count was sent."""
    parts = (done.input_tokens, done.cache_read_input_tokens, done.cache_creation_input_tokens)
    if all(part is None for part in parts):
        return None
    return sum(part or 0 for part in parts)


def record_latest(
    latest: LatestInstruments, done: Completion, input_total: int | None, base: dict[str, Any]
) -> None:
    attributes = {**base, "gen_ai.token.modality": "unknown"}
    for kind, count in (
        ("input", input_total),
        ("output", done.output_tokens),
        ("cache_read", done.cache_read_input_tokens),
        ("cache_write", done.cache_creation_input_tokens),
        ("reasoning", done.reasoning_output_tokens),
    ):
        if count is not None:
            latest.usage[kind].add(count, attributes)
    for kind, count in (("input", input_total), ("output", done.output_tokens)):
        if count is not None:
            latest.operation[kind].record(count, base)


def request_attributes(body: Mapping[str, Any], *, latest: bool = False) -> dict[str, Any]:
    """The ``gen_ai.request.*`` attributes of what a request body asks for beyond the model and
    its limit: stop sequences, thinking, effort, structured output (``gen_ai.output.type``),
    tools, tool choice, service tier and automatic prompt caching. Read from the body as sent,
    so whatever put a field there (a job key, ``request.extra``), the span shows it."""
    attributes: dict[str, Any] = {}
    stops = body.get("stop_sequences")
    if isinstance(stops, list) and stops and all(isinstance(s, str) for s in stops):
        attributes["gen_ai.request.stop_sequences"] = stops
    thinking = body.get("thinking")
    if isinstance(thinking, dict):
        if isinstance(thinking.get("type"), str):
            attributes["gen_ai.request.thinking.type"] = thinking["type"]
        if isinstance(thinking.get("budget_tokens"), int):
            attributes["gen_ai.request.thinking.budget_tokens"] = thinking["budget_tokens"]
    config = body.get("output_config")
    if isinstance(config, dict):
        if isinstance(config.get("effort"), str):
            attributes["gen_ai.request.effort"] = config["effort"]
        output = config.get("format")
        if isinstance(output, dict):
            attributes["gen_ai.output.type"] = (
                "json" if output.get("type") == "json_schema" else str(output.get("type"))
            )
    tools = body.get("tools")
    if isinstance(tools, list):
        attributes["gen_ai.request.tools.count"] = len(tools)
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and isinstance(choice.get("type"), str):
        attributes["gen_ai.request.tool_choice"] = choice["type"]
    if isinstance(body.get("service_tier"), str):
        attributes["gen_ai.request.service_tier"] = body["service_tier"]
    cache = body.get("cache_control")
    if isinstance(cache, dict):
        ttl = cache.get("ttl")
        attributes["gen_ai.request.prompt_cache.ttl"] = ttl if isinstance(ttl, str) else "5m"
    if latest:
        attributes["gen_ai.request.stream"] = body.get("stream") is True
    return attributes
