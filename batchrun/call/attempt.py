"""Stage 3: one streamed attempt over httpx, timed with a monotonic clock.

Sends one request, reads its event stream to the final event and folds it (with the API's own
fold) into a :class:`~batchrun.models.Completion`, noting when every content delta arrived.
Every failure leaves as an :class:`~batchrun.errors.AttemptError` on the returned
:class:`~batchrun.models.Attempt`: httpx's exceptions are translated here and nowhere else.
This is where a server's text enters a run: every message, header value and completion the
Attempt keeps is scrubbed of the run's secrets here (the client's
:class:`~batchrun.call.secrets.Scrubber`), and error messages are capped. This module does not
retry, wait for budgets or write anything: the stream driver does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from batchrun.apis import Api, Fold
from batchrun.apis.sse import SSEDecoder
from batchrun.call.endpoint import ApiClient
from batchrun.call.secrets import NO_SECRETS, Scrubber
from batchrun.clock import Clock
from batchrun.errors import AttemptError, RetryableError
from batchrun.models import Attempt, Completion

__all__ = ["clean_error", "http_error", "parse_retry_after", "stream_attempt"]

_MAX_ERROR_BODY = 64 * 1024
_MAX_ERROR_TYPE = 100  # the API's are ~25 characters
_EVENT_STREAM = "text/event-stream"


@dataclass(slots=True)
class _Response:
    """What the response said before its body: filled in as it arrives."""

    http_status: int | None = None
    request_id: str | None = None
    kept_headers: dict[str, str] = field(default_factory=dict)


async def stream_attempt(
    client: ApiClient,
    api: Api,
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
    arrival offset of every read that brought content, as it arrives (the driver records its
    per-chunk metric there, spread over the stream rather than in one burst at its end).
    """
    scrub = client.scrubber
    sent_at = clock.now()
    fold = api.new_fold()
    response = _Response()
    offsets: list[float] = []
    text_at: list[float] = []  # when the first text delta arrived, once it has
    completion = None
    error: AttemptError | None = None
    try:
        async with asyncio.timeout(total_s):
            await _read(
                client, api, body, response, fold, sent_at, (offsets, text_at), clock, on_chunk
            )
        completion = fold.result()
    except AttemptError as exc:
        error = exc
    except TimeoutError as exc:
        error = RetryableError("timeout", f"attempt exceeded total_s={total_s:g}s")
        error.__cause__ = exc
    except httpx.TimeoutException as exc:
        error = RetryableError("timeout", _timeout_message(exc))
        error.__cause__ = exc
    except httpx.HTTPError as exc:
        # Connection refused or reset, a peer that closed mid-body, a protocol violation.
        error = RetryableError("connection_error", f"{type(exc).__name__}: {exc}".strip())
        error.__cause__ = exc
    if error is not None:
        if error.http_status is None:
            error.http_status = response.http_status  # an error event after HTTP 200
        clean_error(error, scrub)
    if completion is not None and scrub:
        completion = _scrubbed(completion, scrub)
    return Attempt(
        sent_at=sent_at,
        ended_at=clock.now(),
        http_status=response.http_status,
        request_id=None if response.request_id is None else scrub.short(response.request_id),
        chunk_offsets=offsets,
        completion=completion,
        error=error,
        output_tokens_seen=fold.output_tokens_seen,
        ratelimit_headers={k: scrub.short(v) for k, v in response.kept_headers.items()},
        ttft_text_s=text_at[0] if text_at else None,
    )


def clean_error(error: AttemptError, scrub: Scrubber) -> None:
    """Make an error's server text fit to keep: scrubbed of the secrets, then capped."""
    error.error_type = scrub.short(error.error_type, _MAX_ERROR_TYPE)
    error.message = scrub.short(error.message)
    error.args = (error.message,)


def _scrubbed(done: Completion, scrub: Scrubber) -> Completion:
    """``done`` with every text field scrubbed; the same object when none held a secret."""
    changed: dict[str, Any] = {}
    for f in dataclasses.fields(done):
        value = getattr(done, f.name)
        if isinstance(value, str) and (clean := scrub.text(value)) is not value:
            changed[f.name] = clean
    return dataclasses.replace(done, **changed) if changed else done


async def _read(
    client: ApiClient,
    api: Api,
    body: dict[str, Any],
    seen: _Response,
    fold: Fold,
    sent_at: float,
    arrivals: tuple[list[float], list[float]],
    clock: Clock,
    on_chunk: Callable[[float], None] | None,
) -> None:
    """Read the stream into ``fold``; ``arrivals`` gets the offset of every content event and
    the offset of the read that brought the first text delta."""
    offsets, text_at = arrivals
    async with client.open_stream(api.path, body) as response:
        seen.http_status = response.status_code
        seen.request_id = response.headers.get(api.request_id_header)
        seen.kept_headers = api.budget_headers(response.headers)
        if response.status_code != 200:
            raise await http_error(api, response, client.scrubber)
        content_type = response.headers.get("content-type", "")
        # Media types are case-insensitive (RFC 9110): Text/Event-Stream is one too.
        if content_type.partition(";")[0].strip().lower() != _EVENT_STREAM:
            raise RetryableError(
                "stream_error", f"expected an event stream, got content-type {content_type!r}"
            )
        decoder = SSEDecoder()
        feed_all = fold.feed_all
        async for chunk in response.aiter_bytes():
            # Every event of one read arrived at once: one clock reading, before any parsing.
            arrived = clock.now() - sent_at
            before = fold.content
            try:
                feed_all(decoder.feed(chunk))
            finally:  # an error event may follow content in the same read
                if not text_at and fold.text_started:
                    text_at.append(arrived)
                if content := fold.content - before:
                    offsets.extend([arrived] * content)
                    if on_chunk is not None:
                        on_chunk(arrived)
            if fold.done:
                break


async def http_error(
    api: Api, response: httpx.Response, scrub: Scrubber = NO_SECRETS
) -> AttemptError:
    """Translate a non-200 response into the error the API meant; its text scrubbed (before
    the body is parsed or cut) and capped."""
    raw = b""
    async for chunk in response.aiter_bytes():
        raw += chunk
        if len(raw) > _MAX_ERROR_BODY:
            break
    raw = scrub.raw(raw)
    status = response.status_code
    error_type, message = api.error_body(raw, status, response.reason_phrase)
    should_retry = {"true": True, "false": False}.get(
        response.headers.get("x-should-retry", "").lower()
    )
    error = api.classify(
        error_type,
        message,
        http_status=status,
        retry_after=parse_retry_after(response.headers),
        should_retry=should_retry,
    )
    clean_error(error, scrub)
    return error


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
