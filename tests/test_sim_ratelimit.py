"""The simulator's server-side rate limits: buckets, 429s with retry-after, and the headers.

The limiter is checked with a fake clock; the server with httpx over loopback, as a client
sees it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from batchrun.sim import SimConfig
from batchrun.sim.ratelimit import ServerLimiter
from batchrun.sim.responses import StaticLimits, make_limits

HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
MODEL = "claude-sonnet-4-5"


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _limiter(clock: Clock, **limits: Any) -> ServerLimiter:
    return ServerLimiter(clock=clock, wall=lambda: 1_700_000_000.0 + clock.now, **limits)


def test_buckets_start_full_and_refuse_with_whole_seconds_to_wait() -> None:
    """60 a minute, a 3 s burst: three go at once, the fourth is told to retry after 1 s."""
    clock = Clock()
    limiter = _limiter(clock, requests_per_minute=60, burst_s=3)
    assert all(limiter.admit(model=MODEL, input_tokens=1, max_tokens=1).ok for _ in range(3))
    refused = limiter.admit(model=MODEL, input_tokens=1, max_tokens=1)
    assert (refused.ok, refused.retry_after_s, refused.kind) == (False, 1, "requests")
    assert "60 requests per minute" in limiter.refusal_message(refused)
    clock.now = 1.0
    assert limiter.admit(model=MODEL, input_tokens=1, max_tokens=1).ok


def test_output_tokens_reserve_max_tokens_and_get_back_what_was_not_written() -> None:
    """600 output tokens a minute (60 s burst): max_tokens 400 twice is refused until the
    first gives back the 350 it did not write."""
    clock = Clock()
    limiter = _limiter(clock, output_tokens_per_minute=600)
    first = limiter.admit(model=MODEL, input_tokens=5, max_tokens=400)
    assert first.ok
    refused = limiter.admit(model=MODEL, input_tokens=5, max_tokens=400)
    assert (refused.ok, refused.kind, refused.retry_after_s) == (False, "output-tokens", 20)
    first.output_tokens = 50
    limiter.finish(first)
    limiter.finish(first)  # once only
    assert limiter.admit(model=MODEL, input_tokens=5, max_tokens=400).ok
    assert "output tokens per minute" in limiter.refusal_message(refused)


def test_a_refused_request_is_charged_nothing() -> None:
    """Refused on input tokens: the request bucket keeps what it had."""
    # (A request above a bucket's whole capacity is not refused forever: it goes when the
    # bucket is full and leaves a debt, as on the client side.)
    clock = Clock()
    limiter = _limiter(
        clock, requests_per_minute=10, input_tokens_per_minute=100, output_tokens_per_minute=1000
    )
    assert limiter.admit(model=MODEL, input_tokens=60, max_tokens=10).ok
    assert not limiter.admit(model=MODEL, input_tokens=50, max_tokens=10).ok  # 40 left
    headers = limiter.headers(MODEL)
    assert headers["anthropic-ratelimit-requests-remaining"] == "9"  # not 8


def test_headers_report_limit_remaining_rounded_and_reset() -> None:
    """Tokens left are rounded down to thousands; reset is when the bucket is full again."""
    clock = Clock()
    limiter = _limiter(
        clock, requests_per_minute=60, input_tokens_per_minute=60_000, output_tokens_per_minute=6000
    )
    assert limiter.admit(model=MODEL, input_tokens=1_500, max_tokens=10).ok
    headers = limiter.headers(MODEL)
    assert headers["anthropic-ratelimit-requests-limit"] == "60"
    assert headers["anthropic-ratelimit-requests-remaining"] == "59"
    assert headers["anthropic-ratelimit-input-tokens-remaining"] == "58000"  # 58,500
    reset = datetime.fromisoformat(headers["anthropic-ratelimit-requests-reset"])
    assert reset == datetime.fromtimestamp(1_700_000_001, UTC)  # one request back in 1 s
    # The stricter of input and output, as a fraction of its capacity, is input here.
    assert headers["anthropic-ratelimit-tokens-limit"] == "60000"
    exhausted = limiter.headers(MODEL, exhausted=True)
    assert exhausted["anthropic-ratelimit-requests-remaining"] == "0"


def test_a_config_without_limits_keeps_the_static_headers() -> None:
    """No limit configured: everything is admitted and the old fixed headers are sent."""
    assert isinstance(make_limits(SimConfig()), StaticLimits)
    assert isinstance(make_limits(SimConfig(requests_per_minute=5)), ServerLimiter)


def _body(n: int, max_tokens: int = 20) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": max_tokens,
        "stream": True,
        "messages": [{"role": "user", "content": f"question {n}"}],
    }


def test_the_server_answers_429_with_retry_after_and_headers(sim_server: Any) -> None:
    """Two requests a burst: the third gets the API's 429 body, retry-after and headers."""
    # One request back every 10 s: the third is refused however slowly the host sends them.
    server = sim_server(requests_per_minute=6, rate_limit_burst_s=20)
    with httpx.Client(base_url=server.base_url, headers=HEADERS) as client:
        answers = [client.post("/v1/messages", json=_body(n)) for n in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[0].headers["anthropic-ratelimit-requests-remaining"] == "1"
    assert answers[0].headers["content-type"].startswith("text/event-stream")
    refused = answers[2]
    assert refused.headers["retry-after"] == "10"
    assert refused.headers["anthropic-ratelimit-requests-limit"] == "6"
    assert refused.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert refused.headers["request-id"].startswith("req_")
    body = json.loads(refused.text)
    assert body["error"]["type"] == "rate_limit_error"
    assert "6 requests per minute" in body["error"]["message"]
    assert server.stats.requests_by_status == {200: 2, 429: 1}


def test_the_server_gives_back_unwritten_output_when_a_stream_ends(sim_server: Any) -> None:
    """max_tokens 1000 against a bucket of 1,500: the second fits only because the first wrote
    ~20. The bucket refills 2.5 tokens a second, so that the third (1,499) is refused however
    slowly the host sends them (at 1,500/min it fitted after 1.6 s)."""
    server = sim_server(
        output_tokens_per_minute=150,
        rate_limit_burst_s=600,
        min_output_tokens=10,
        max_output_tokens=30,
    )
    with httpx.Client(base_url=server.base_url, headers=HEADERS) as client:
        first = client.post("/v1/messages", json=_body(1, max_tokens=1000))
        second = client.post("/v1/messages", json=_body(2, max_tokens=1000))
        third = client.post("/v1/messages", json=_body(3, max_tokens=1499))
    assert (first.status_code, second.status_code) == (200, 200)
    assert third.status_code == 429
    assert "output tokens per minute" in third.json()["error"]["message"]


def test_count_tokens_is_not_rate_limited(sim_server: Any) -> None:
    """Counting tokens never spends the message limits, and still reports them."""
    server = sim_server(requests_per_minute=60, rate_limit_burst_s=1)
    body = {"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=server.base_url, headers=HEADERS) as client:
        counts = [client.post("/v1/messages/count_tokens", json=body) for _ in range(3)]
        message = client.post("/v1/messages", json=_body(0))
    assert [c.status_code for c in counts] == [200, 200, 200]
    assert counts[0].headers["anthropic-ratelimit-requests-remaining"] == "1"
    assert message.status_code == 200


@pytest.mark.parametrize("field", ["requests_per_minute", "output_tokens_per_minute"])
def test_limits_must_be_positive(field: str) -> None:
    """A zero limit is a configuration error, not an always-429 server."""
    with pytest.raises(ValueError, match="greater than 0"):
        SimConfig.model_validate({field: 0})
