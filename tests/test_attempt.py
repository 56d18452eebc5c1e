"""One attempt over httpx: outcome, timing and the translation of every failure."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from batchrun.apis import APIS
from batchrun.call.attempt import parse_retry_after, stream_attempt
from batchrun.call.endpoint import ApiClient
from batchrun.call.secrets import MAX_TEXT, NO_SECRETS, Scrubber
from batchrun.clock import Clock
from batchrun.errors import FatalAPIError, PermanentError, RetryableError
from batchrun.models import Attempt
from tests.conftest import FIXTURES

BODY = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 16,
    "stream": True,
    "messages": [{"role": "user", "content": "hi"}],
}
SSE = {"content-type": "text/event-stream; charset=utf-8", "request-id": "req_test"}


def _fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes().rstrip(b"\n") + b"\n\n"


async def _attempt(
    handler: Callable[[httpx.Request], httpx.Response],
    *,
    total_s: float = 5.0,
    api: str = "messages",
    scrubber: Scrubber = NO_SECRETS,
) -> Attempt:
    async with ApiClient(
        transport=httpx.MockTransport(handler), base_url="http://api.test", scrubber=scrubber
    ) as client:
        return await stream_attempt(
            client,
            APIS[api],
            BODY,
            total_s=total_s,  # type: ignore[arg-type]
            clock=Clock(),
        )


def _error(
    status: int, error_type: str, message: str, headers: dict[str, str] | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    body = {
        "type": "error",
        "error": {"type": error_type, "message": message},
        "request_id": "req_err",
    }
    return lambda request: httpx.Response(
        status, json=body, headers={"request-id": "req_err", **(headers or {})}
    )


async def _chunks(data: bytes, size: int, delay: float = 0.0) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        if delay:
            await asyncio.sleep(delay)
        yield data[start : start + size]


async def test_a_full_stream_yields_the_completion_and_its_timing() -> None:
    """The basic fixture gives its text, usage, request-id and one offset per content delta."""
    data = _fixture("basic_response.sse")
    attempt = await _attempt(lambda r: httpx.Response(200, headers=SSE, content=_chunks(data, 7)))
    assert attempt.error is None
    assert attempt.completion is not None
    assert attempt.completion.text == "Hello there!"
    assert attempt.completion.stop_reason == "end_turn"
    assert (attempt.completion.input_tokens, attempt.completion.output_tokens) == (11, 6)
    assert attempt.request_id == "req_test"
    assert attempt.http_status == 200
    assert len(attempt.chunk_offsets) == 3
    assert attempt.chunk_offsets == sorted(attempt.chunk_offsets)
    assert attempt.ttft_s == attempt.chunk_offsets[0]
    assert 0 <= attempt.ttft_s <= attempt.e2e_s


async def test_the_request_carries_the_body() -> None:
    """The body is posted as JSON to the API's path."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, headers=SSE, content=_fixture("basic_response.sse"))

    await _attempt(handler)
    assert seen[0].url.path == "/v1/messages"
    assert json.loads(seen[0].content) == BODY


@pytest.mark.parametrize(
    ("handler", "cls", "error_type", "status"),
    [
        (_error(529, "overloaded_error", "Overloaded"), RetryableError, "overloaded_error", 529),
        (_error(500, "api_error", "Internal"), RetryableError, "api_error", 500),
        (_error(409, "conflict_error", "Conflict"), RetryableError, "conflict_error", 409),
        (
            _error(400, "invalid_request_error", "max_tokens: too big"),
            PermanentError,
            "invalid_request_error",
            400,
        ),
        (_error(413, "request_too_large", "too large"), PermanentError, "request_too_large", 413),
        (
            _error(401, "authentication_error", "invalid x-api-key"),
            FatalAPIError,
            "authentication_error",
            401,
        ),
        (_error(403, "permission_error", "no"), FatalAPIError, "permission_error", 403),
        (_error(402, "billing_error", "pay"), FatalAPIError, "billing_error", 402),
        (
            _error(404, "not_found_error", "model: claude-nope"),
            FatalAPIError,
            "not_found_error",
            404,
        ),
        (
            _error(429, "rate_limit_error", "You have reached your specified API usage limits."),
            FatalAPIError,
            "rate_limit_error",
            429,
        ),
        (
            _error(500, "api_error", "no", {"x-should-retry": "false"}),
            PermanentError,
            "api_error",
            500,
        ),
        (
            _error(400, "invalid_request_error", "odd", {"x-should-retry": "true"}),
            RetryableError,
            "invalid_request_error",
            400,
        ),
    ],
)
async def test_http_errors_are_classified_as_the_protocol_says(
    handler: Callable[[httpx.Request], httpx.Response], cls: type, error_type: str, status: int
) -> None:
    """Each status and error type maps to retryable, permanent or fatal, with its details."""
    attempt = await _attempt(handler)
    assert type(attempt.error) is cls
    assert attempt.error is not None
    assert attempt.error.error_type == error_type
    assert attempt.error.http_status == status
    assert attempt.request_id == "req_err"
    assert attempt.completion is None


async def test_a_429_carries_retry_after() -> None:
    """A rate limit with retry-after is retryable and says how long to wait."""
    attempt = await _attempt(_error(429, "rate_limit_error", "slow", {"retry-after": "3"}))
    assert isinstance(attempt.error, RetryableError)
    assert attempt.error.retry_after == 3.0


async def test_a_proxy_page_is_a_retryable_http_error() -> None:
    """A 502 with an HTML body is retryable, with a short readable message."""
    attempt = await _attempt(
        lambda r: httpx.Response(
            502,
            text="<html><body><h1>502 Bad Gateway</h1></body></html>",
            headers={"content-type": "text/html"},
        )
    )
    assert isinstance(attempt.error, RetryableError)
    assert attempt.error.error_type == "http_error"
    assert attempt.error.message.startswith("HTTP 502 Bad Gateway")


@pytest.mark.parametrize("content_type", ["Text/Event-Stream", "TEXT/EVENT-STREAM;charset=UTF-8"])
async def test_the_content_type_is_matched_without_regard_to_case(content_type: str) -> None:
    """Media types are case-insensitive: any spelling of text/event-stream is an event stream."""
    data = _fixture("basic_response.sse")
    headers = {**SSE, "content-type": content_type}
    attempt = await _attempt(lambda r: httpx.Response(200, headers=headers, content=data))
    assert attempt.error is None
    assert attempt.completion is not None


async def test_another_content_type_is_a_short_stream_error() -> None:
    """A 200 that is not an event stream is a stream_error; a huge header value is capped."""
    headers = {**SSE, "content-type": "text/plain" + "x" * 20_000}
    attempt = await _attempt(lambda r: httpx.Response(200, headers=headers, content=b"hi"))
    assert isinstance(attempt.error, RetryableError)
    assert attempt.error.error_type == "stream_error"
    assert attempt.error.message.startswith("expected an event stream")
    assert len(attempt.error.message) <= MAX_TEXT


async def test_a_huge_error_body_is_capped_in_the_message() -> None:
    """A 15 KB error message (JSON or a proxy page) becomes at most MAX_TEXT characters."""
    for handler in (
        _error(400, "invalid_request_error", "y" * 15_000),
        lambda r: httpx.Response(502, text="z " * 15_000),
    ):
        attempt = await _attempt(handler)
        assert attempt.error is not None
        assert 900 < len(attempt.error.message) <= MAX_TEXT


async def test_what_a_server_echoes_of_the_key_is_scrubbed_from_the_attempt() -> None:
    """The client's secrets leave the error, the request-id, kept headers and the completion;
    a key past the length cap leaves no prefix behind."""
    key = "sk-ant-api03-abcdefghijklmnop"
    data = _fixture("basic_response.sse").replace(b"Hello", key.encode())
    echo = {**SSE, "request-id": key, "anthropic-ratelimit-requests-limit": key}
    scrubber = Scrubber([key])
    ok = await _attempt(
        lambda r: httpx.Response(200, headers=echo, content=data), scrubber=scrubber
    )
    assert ok.completion is not None
    assert ok.completion.text == "[redacted] there!"
    assert key not in (ok.completion.content_json or "")
    assert ok.request_id == "[redacted]"
    assert ok.ratelimit_headers == {"anthropic-ratelimit-requests-limit": "[redacted]"}
    cut = "m" * (MAX_TEXT - 5) + key
    failed = await _attempt(_error(400, "invalid_request_error", cut), scrubber=scrubber)
    assert failed.error is not None
    assert "sk-ant" not in failed.error.message


async def test_overload_inside_the_stream_fails_the_attempt() -> None:
    """An error event after HTTP 200 is a retryable overload, and no completion is kept."""
    data = _fixture("basic_response.sse").split(b"event: content_block_stop")[0]
    data += (
        b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", '
        b'"message": "Overloaded"}}\n\n'
    )
    attempt = await _attempt(lambda r: httpx.Response(200, headers=SSE, content=data))
    assert isinstance(attempt.error, RetryableError)
    assert attempt.error.error_type == "overloaded_error"
    assert attempt.error.http_status == 200
    assert attempt.request_id == "req_test"
    assert attempt.completion is None
    assert len(attempt.chunk_offsets) == 3
    assert attempt.ttft_s == attempt.chunk_offsets[0]


async def test_a_stream_without_its_final_event_is_an_error() -> None:
    """A body that ends before message_stop is a retryable stream_error, never a success."""
    data = _fixture("basic_response.sse").split(b"event: message_delta")[0]
    attempt = await _attempt(lambda r: httpx.Response(200, headers=SSE, content=data))
    assert isinstance(attempt.error, RetryableError)
    assert attempt.error.error_type == "stream_error"
    assert attempt.completion is None


async def test_a_200_that_is_not_an_event_stream_is_a_stream_error() -> None:
    """A JSON body where a stream was asked for is a retryable stream_error."""
    attempt = await _attempt(lambda r: httpx.Response(200, json={"type": "message"}))
    assert isinstance(attempt.error, RetryableError)
    assert attempt.error.error_type == "stream_error"


async def test_connection_failures_are_retryable_connection_errors() -> None:
    """A refused connection becomes connection_error."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    attempt = await _attempt(handler)
    assert isinstance(attempt.error, RetryableError)
    assert attempt.error.error_type == "connection_error"
    assert attempt.error.http_status is None


async def test_the_total_deadline_bounds_a_slow_stream() -> None:
    """An attempt that outlives total_s ends as a retryable timeout."""
    data = _fixture("basic_response.sse")
    attempt = await _attempt(
        lambda r: httpx.Response(200, headers=SSE, content=_chunks(data, 50, delay=0.05)),
        total_s=0.2,
    )
    assert isinstance(attempt.error, RetryableError)
    assert attempt.error.error_type == "timeout"
    assert attempt.completion is None


async def test_legacy_completion_stream() -> None:
    """The legacy stream folds into its text and stop reason, with no usage."""
    events = [
        {"type": "completion", "completion": t, "stop_reason": None, "model": "claude-2.0"}
        for t in (" Hello", "!")
    ]
    events.append(
        {
            "type": "completion",
            "completion": "",
            "stop_reason": "stop_sequence",
            "model": "claude-2.0",
        }
    )
    data = b"".join(b"event: completion\ndata: " + json.dumps(e).encode() + b"\n\n" for e in events)
    attempt = await _attempt(
        lambda r: httpx.Response(200, headers=SSE, content=data), api="complete"
    )
    assert attempt.completion is not None
    assert attempt.completion.text == " Hello!"
    assert attempt.completion.stop_reason == "stop_sequence"
    assert attempt.completion.output_tokens is None
    assert len(attempt.chunk_offsets) == 2


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    """retry-after-ms wins; seconds and HTTP dates are read; a date in the past is zero."""
    assert parse_retry_after(httpx.Headers(headers)) == expected
