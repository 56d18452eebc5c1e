"""Stage 3: one streamed attempt over httpx, timed with a monotonic clock.

Sends one request, reads its event stream to the final event and folds it into a
:class:`~batchrun.records.Completion`, noting when every content delta arrived. Every failure
leaves as an :class:`~batchrun.errors.AttemptError`: httpx's exceptions are translated here and
nowhere else. This module does not retry, wait for budgets or write anything: the runner does.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from batchrun.apis import bodies as apis
from batchrun.apis import folds
from batchrun.apis.sse import SSEDecoder
from batchrun.call.endpoint import ApiClient
from batchrun.clock import Clock
from batchrun.errors import AttemptError, RetryableError, api_error
from batchrun.models import Attempt

__all__ = ["http_error", "parse_retry_after", "stream_attempt"]

_MAX_ERROR_BODY = 64 * 1024


async def stream_attempt(
    client: ApiClient,
    api: apis.Api,
    body: dict[str, Any],
    *,
    total_s: float,
    clock: Clock,
    on_chunk: Callable[[float], None] | None = None,
) -> Attempt:
    """Send ``body`` once and read the stream to its end; never raises for the attempt's failure.

    The outcome is in the returned :class:`Attempt`: ``completion`` on success, ``error`` (an
    :class:`AttemptError`) otherwise. Connect and idle timeouts are the client's; ``total_s``
    bounds the whole attempt, headers and body together. ``on_chunk`` is called with the
    arrival offset of every read that brought content, as it arrives (the worker records its
    per-chunk metric there, spread over the stream rather than in one burst at its end).
    """
    attempt = Attempt(sent_at=clock.now())
    fold = folds.new_fold(api)
    try:
        async with asyncio.timeout(total_s):
            await _read(client, api, body, attempt, fold, clock, on_chunk)
        attempt.completion = fold.result()
    except AttemptError as exc:
        attempt.error = exc
    except TimeoutError as exc:
        attempt.error = RetryableError("timeout", f"attempt exceeded total_s={total_s:g}s")
        attempt.error.__cause__ = exc
    except httpx.TimeoutException as exc:
        attempt.error = RetryableError("timeout", _timeout_message(exc))
        attempt.error.__cause__ = exc
    except httpx.HTTPError as exc:
        # Connection refused or reset, a peer that closed mid-body, a protocol violation.
        attempt.error = RetryableError("connection_error", f"{type(exc).__name__}: {exc}".strip())
        attempt.error.__cause__ = exc
    attempt.ended_at = clock.now()
    attempt.output_tokens_seen = fold.output_tokens_seen
    if attempt.error is not None:
        if attempt.error.http_status is None:
            attempt.error.http_status = attempt.http_status
        if attempt.error.request_id is None:
            attempt.error.request_id = attempt.request_id
        attempt.error.output_tokens_seen = fold.output_tokens_seen
        attempt.error.ttft_s = attempt.ttft_s
    return attempt


async def _read(
    client: ApiClient,
    api: apis.Api,
    body: dict[str, Any],
    attempt: Attempt,
    fold: folds.Fold,
    clock: Clock,
    on_chunk: Callable[[float], None] | None,
) -> None:
    async with client.open_stream(apis.request_path(api), body) as response:
        attempt.http_status = response.status_code
        attempt.request_id = response.headers.get("request-id")
        attempt.ratelimit_headers = {
            name: value
            for name, value in response.headers.items()
            if name.startswith("anthropic-ratelimit-") or name in ("retry-after", "retry-after-ms")
        }
        if response.status_code != 200:
            raise await http_error(response)
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("text/event-stream"):
            raise RetryableError(
                "stream_error", f"expected an event stream, got content-type {content_type!r}"
            )
        decoder = SSEDecoder()
        sent_at = attempt.sent_at
        offsets = attempt.chunk_offsets
        feed_all = fold.feed_all
        async for chunk in response.aiter_bytes():
            # Every event of one read arrived at once: one clock reading, before any parsing.
            arrived = clock.now() - sent_at
            before = fold.content
            try:
                feed_all(decoder.feed(chunk))
            finally:  # an error event may follow content in the same read
                if content := fold.content - before:
                    offsets.extend([arrived] * content)
                    if on_chunk is not None:
                        on_chunk(arrived)
            if fold.done:
                break


async def http_error(response: httpx.Response) -> AttemptError:
    """Translate a non-200 response into the error the API meant."""
    raw = b""
    async for chunk in response.aiter_bytes():
        raw += chunk
        if len(raw) > _MAX_ERROR_BODY:
            break
    status = response.status_code
    error_type, message = _error_body(raw, status, response.reason_phrase)
    should_retry = {"true": True, "false": False}.get(
        response.headers.get("x-should-retry", "").lower()
    )
    return api_error(
        error_type,
        message,
        http_status=status,
        request_id=response.headers.get("request-id"),
        retry_after=parse_retry_after(response.headers),
        should_retry=should_retry,
    )


def _error_body(raw: bytes, status: int, reason: str) -> tuple[str, str]:
    """The API's ``error.type`` and ``error.message``, or a stand-in for a body from a proxy."""
    try:
        payload = json.loads(raw)
        error = payload["error"]
        return str(error["type"]), str(error.get("message", ""))[:500]
    except (ValueError, KeyError, TypeError, RecursionError):
        text = raw.decode("utf-8", "replace").strip()
        snippet = " ".join(text.split())[:200]
        return "http_error", f"HTTP {status} {reason}" + (f": {snippet}" if snippet else "")


def parse_retry_after(headers: httpx.Headers) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, or ``retry-after`` as seconds
    or an HTTP date. ``None`` when absent or unreadable."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _timeout_message(exc: httpx.TimeoutException) -> str:
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect timed out"
    if isinstance(exc, httpx.ReadTimeout):
        return "stream idle: no data within timeouts.idle_s"
    return f"{type(exc).__name__}"
