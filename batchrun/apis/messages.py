"""The Messages API (``POST /v1/messages``): request body, stream fold, batch results.

Part of :mod:`batchrun.apis`. Pure code: no I/O, no retries, no clocks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from batchrun.apis.anthropic import LATEST_VERSION, SAMPLING_KEYS, AnthropicApi
from batchrun.apis.fold import payload_str
from batchrun.apis.messages_fold import MessagesFold, blocks_text, usage_fields
from batchrun.apis.tokens import MESSAGE_OVERHEAD, content_tokens, json_tokens
from batchrun.errors import RetryableError
from batchrun.models import Completion, RequestItem

__all__ = ["MESSAGES", "Messages"]

# What /v1/messages/count_tokens counts of a body.
_COUNTED_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking")
# Request keys sent under their own name, as given.
_AS_GIVEN = (
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "thinking",
    "tools",
    "tool_choice",
    "metadata",
    "service_tier",
)
# Every body field batchrun sets, and the job key that sets it: request.extra may not set one.
_NAMED_FIELDS = {
    "model": "request.model",
    "max_tokens": "request.max_tokens",
    "messages": "input.prompt (or input.messages_column)",
    "system": "input.system",
    "stream": "request.mode (every streamed request sends stream: true)",
    **{key: f"request.{key}" for key in _AS_GIVEN},
    "output_config": "request.effort and request.output_format",
    "cache_control": "request.prompt_cache",
}


class Messages(AnthropicApi):
    """``POST /v1/messages``, streamed; its batch form is the Message Batches API."""

    name = "messages"
    path = "/v1/messages"
    title = "the Messages API"
    operation = "chat"
    text_only = False
    batchable = True
    accepts = SAMPLING_KEYS | {
        "thinking",
        "effort",
        "output_format",
        "tools",
        "tool_choice",
        "prompt_cache",
        "metadata",
        "service_tier",
        "extra",
    }
    named_fields: Mapping[str, str] = _NAMED_FIELDS
    default_version = LATEST_VERSION
    versions: frozenset[str] | None = None  # any; the job checks what each version refuses

    def __str__(self) -> str:
        return self.name

    def body(self, item: RequestItem, params: Mapping[str, Any]) -> dict[str, Any]:
        """The streaming request body: the item's conversation with ``params`` (the request
        keys by their job names, unset ones left out) as the API takes them: ``effort`` and
        ``output_format`` in ``output_config``, ``prompt_cache`` as a top-level
        ``cache_control`` (and on the system prompt, the prefix the rows share), ``extra``
        merged in as is (the job refuses an extra key that collides with one set here)."""
        body: dict[str, Any] = {"model": params["model"], "max_tokens": params["max_tokens"]}
        body["messages"] = list(item.messages)
        if item.system:
            body["system"] = item.system
        for key in _AS_GIVEN:
            if params.get(key) is not None:
                body[key] = params[key]
        if isinstance(body.get("tools"), str):  # a path: load_job reads it before any body
            raise TypeError(f"tools is {body['tools']!r}, not a list: load the job first")
        output_config: dict[str, Any] = {}
        if params.get("effort") is not None:
            output_config["effort"] = params["effort"]
        if params.get("output_format") is not None:
            schema = params["output_format"]
            if not isinstance(schema, Mapping):  # a path: load_job reads it before any body
                raise TypeError(f"output_format is {schema!r}, not a schema: load the job first")
            output_config["format"] = {"type": "json_schema", "schema": schema}
        if output_config:
            body["output_config"] = output_config
        if params.get("prompt_cache") is not None:
            ttl = params["prompt_cache"]
            marker = {"type": "ephemeral", **({"ttl": ttl} if ttl != "5m" else {})}
            body["cache_control"] = marker
            if item.system:
                # Automatic caching writes the whole prompt, which differs from row to row: a
                # breakpoint on the system prompt too lets every row read the prefix they share.
                body["system"] = [{"type": "text", "text": item.system, "cache_control": marker}]
        body.update(params.get("extra") or {})
        body["stream"] = True
        return body

    count_tokens_path: str | None = "/v1/messages/count_tokens"

    @staticmethod
    def estimate_input_tokens(body: Mapping[str, Any]) -> int:
        """System, messages (plus a few tokens each), tools: see :mod:`batchrun.apis.tokens`."""
        total = content_tokens(body.get("system"))
        for message in body.get("messages") or []:
            if isinstance(message, dict):
                total += MESSAGE_OVERHEAD + content_tokens(message.get("content"))
        for name in ("tools", "tool_choice"):
            if name in body:
                total += json_tokens(body[name])
        return max(1, total)

    @staticmethod
    def output_reservation(body: Mapping[str, Any]) -> int:
        """What a request may write at most: its ``max_tokens``."""
        value = body.get("max_tokens", 0)
        return value if isinstance(value, int) and value > 0 else 0

    @staticmethod
    def count_tokens_body(body: Mapping[str, Any]) -> dict[str, Any] | None:
        """The ``count_tokens`` body for a request body."""
        return {k: body[k] for k in _COUNTED_FIELDS if k in body}

    def new_fold(self) -> MessagesFold:
        return MessagesFold(self.classify_event)

    def batch_completion(self, message: Any) -> Completion:
        """A non-streaming response (a ``message`` object) as the Completion its stream would
        have folded into: the same text, ``content_json``, stop reason and usage.

        Raises ``RetryableError("invalid_response")`` when ``message`` lacks a content list.
        """
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
            raise RetryableError("invalid_response", "the message has no list of content blocks")
        return Completion(
            text=blocks_text(content),
            stop_reason=payload_str(message, "stop_reason"),
            stop_sequence=payload_str(message, "stop_sequence"),
            content_json=json.dumps(content, ensure_ascii=False, separators=(",", ":")),
            response_id=payload_str(message, "id"),
            response_model=payload_str(message, "model"),
            **usage_fields(message.get("usage")),
        )


MESSAGES = Messages()
