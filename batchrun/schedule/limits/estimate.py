"""Limits: what a request will cost before it is sent, and what the server says is left.

Pure functions over a request body and response headers; no I/O (the exact count through
``/v1/messages/count_tokens`` is the budget's, through a function the runner injects).

The input estimate is deliberately cheap: about four characters a token for ASCII text, one
token for any other character (CJK text runs near one token a character), 1,600 tokens for an
image (the API's figure for a full-size one), a quarter of the JSON for any other block, plus
:data:`MESSAGE_OVERHEAD` tokens a message for roles and separators. It is corrected by the
count the server reports once the stream ends, so its errors never accumulate.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BUCKETS",
    "MESSAGE_OVERHEAD",
    "ServerView",
    "count_tokens_body",
    "estimate_input_tokens",
    "output_reservation",
    "read_ratelimit_headers",
    "read_retry_after",
]

MESSAGE_OVERHEAD = 3
IMAGE_TOKENS = 1_600
# bucket name -> the header infix the API uses for it
BUCKETS = {"requests": "requests", "input_tokens": "input-tokens", "output_tokens": "output-tokens"}
_COUNTED_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking")


def _text_tokens(text: str) -> int:
    ascii_chars = sum(1 for ch in text if ch < "\x80")
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return _text_tokens(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            total += _text_tokens(block["text"])
        elif block.get("type") == "image":
            total += IMAGE_TOKENS
        else:
            total += math.ceil(len(json.dumps(block, ensure_ascii=False)) / 4)
    return total


def estimate_input_tokens(body: Mapping[str, Any]) -> int:
    """A cheap upper-ish estimate of the input tokens of a Messages or Complete body."""
    if "prompt" in body:
        return _text_tokens(str(body["prompt"]))
    messages = body.get("messages") or []
    total = _content_tokens(body.get("system"))
    for message in messages:
        if isinstance(message, dict):
            total += MESSAGE_OVERHEAD + _content_tokens(message.get("content"))
    for name in ("tools", "tool_choice"):
        if name in body:
            total += math.ceil(len(json.dumps(body[name], ensure_ascii=False)) / 4)
    return max(1, total)


def output_reservation(body: Mapping[str, Any]) -> int:
    """What a request may write at most: ``max_tokens`` (``max_tokens_to_sample``, legacy)."""
    value = body.get("max_tokens", body.get("max_tokens_to_sample", 0))
    return value if isinstance(value, int) and value > 0 else 0


def count_tokens_body(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``/v1/messages/count_tokens`` body for a Messages body; ``None`` for legacy ones."""
    if "messages" not in body:
        return None
    return {k: body[k] for k in _COUNTED_FIELDS if k in body}


@dataclass(frozen=True, slots=True)
class ServerView:
    """What one response's headers say of one bucket: its per-minute limit and what is left."""

    limit: int | None
    remaining: int | None


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        number = int(float(value))
    except ValueError:
        return None
    return number if number >= 0 else None


def read_ratelimit_headers(headers: Mapping[str, str]) -> dict[str, ServerView]:
    """The ``anthropic-ratelimit-{requests,input-tokens,output-tokens}-{limit,remaining}``
    headers, by bucket name; buckets the response says nothing of are left out.

    ``*-reset`` is not needed: a bucket that refills continuously at ``limit`` a minute is full
    again ``(limit - remaining) / rate`` after the response, which is what the reset says (to the
    whole second). The combined ``tokens-*`` headers repeat the stricter of input and output.
    """
    views: dict[str, ServerView] = {}
    for name, infix in BUCKETS.items():
        limit = _int(headers.get(f"anthropic-ratelimit-{infix}-limit"))
        remaining = _int(headers.get(f"anthropic-ratelimit-{infix}-remaining"))
        if limit == 0:
            limit = None
        if limit is not None or remaining is not None:
            views[name] = ServerView(limit, remaining)
    return views


def read_retry_after(headers: Mapping[str, str]) -> float | None:
    """``retry-after-ms`` or ``retry-after`` in seconds. The client already parses it (HTTP
    dates too) into the error it raises; this is for a 429 that reached the budget without."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers[name]) * scale)
        except (KeyError, ValueError):
            continue
    return None
