"""The Messages API (``POST /v1/messages``): request body, stream fold, batch results.

Part of :mod:`batchrun.apis`. Pure code: no I/O, no retries, no clocks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from batchrun.apis.anthropic import SAMPLING_KEYS, AnthropicApi
from batchrun.apis.fold import payload_str
from batchrun.apis.messages_fold import MessagesFold, blocks_text, usage_fields
from batchrun.apis.tokens import MESSAGE_OVERHEAD, content_tokens, json_tokens
from batchrun.errors import RetryableError
from batchrun.models import Completion, RequestItem

__all__ = ["MESSAGES", "Messages"]

# What /v1/messages/count_tokens counts of a body.
_COUNTED_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking")


class Messages(AnthropicApi):
    """``POST /v1/messages``, streamed; its batch form is the Message Batches API."""

    name = "messages"
    path = "/v1/messages"
    title = "the Messages API"
    operation = "chat"
    text_only = False
    batchable = True
    accepts = SAMPLING_KEYS

    def __str__(self) -> str:
        return self.name

    def body(self, item: RequestItem, params: Mapping[str, Any]) -> dict[str, Any]:
        """The streaming request body: ``params`` (request keys, ``None`` left out) with the
        item's conversation."""
        body: dict[str, Any] = {"model": params["model"], "max_tokens": params["max_tokens"]}
        body["messages"] = list(item.messages)
        if item.system:
            body["system"] = item.system
        for key, value in params.items():
            if key not in body and value is not None:
                body[key] = value
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
