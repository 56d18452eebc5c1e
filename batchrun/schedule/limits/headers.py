"""Limits: what the server says is left, read from a response's rate-limit headers.

Pure functions over headers; no I/O. (What a request will cost before it is sent is its API's
estimate: :meth:`batchrun.apis.Api.estimate_input_tokens`.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["BUCKETS", "ServerView", "read_ratelimit_headers", "read_retry_after"]

# bucket name -> the header infix the API uses for it
BUCKETS = {"requests": "requests", "input_tokens": "input-tokens", "output_tokens": "output-tokens"}


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
