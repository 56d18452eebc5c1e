"""The simulator: wire format, determinism, validation and every fault, seen from real clients.

The official ``anthropic`` SDK is the independent judge of the Messages format; the legacy
endpoint (which the SDK no longer has) and the faults are checked with httpx and a minimal SSE
split. One module-wide server holds a fault rule per kind, selected by a marker in the prompt.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any, get_args

import anthropic
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchrun.sim import Fault, FaultKind, SimConfig, SimServer, serve
from batchrun.sim.events import messages_script
from batchrun.sim.faults import select_fault
from batchrun.sim.stream import plan
from batchrun.sim.text import generate
from batchrun.sim.turn import model_turn
from batchrun.sim.validate import GenRequest
from tests.conftest import wait_until

KEY = "sk-sim-test"
HEADERS = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
STALL_S = 0.3
KINDS: tuple[str, ...] = get_args(FaultKind)
FAULTS = [
    Fault(
        kind=kind,
        match=f"<{kind}>",
        after_deltas=2,
        retry_after_s=7 if kind == "rate_limited" else None,
    )
    for kind in KINDS
] + [
    Fault(kind="overloaded", attempts=[1], match="<first-only>"),
    Fault(kind="server_error", attempts=[2, 3], match="<second-and-third>"),
]
CONFIG = SimConfig(
    ttft_s=0,
    token_interval_s=0,
    min_output_tokens=8,
    max_output_tokens=40,
    stall_s=STALL_S,
    api_key=KEY,
    max_body_bytes=100_000,
    faults=FAULTS,
)


@pytest.fixture(scope="module")
def server() -> Iterator[SimServer]:
    with SimServer(CONFIG) as sim:
        yield sim


@pytest.fixture
def sdk(server: SimServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.base_url, api_key=KEY, max_retries=0) as client:
        yield client


def messages_body(prompt: str = "Hello", **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-sim-1",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": prompt}],
        **extra,
    }


def complete_body(prompt: str = "Hello", **extra: Any) -> dict[str, Any]:
    return {
        "model": "claude-2.1",
        "max_tokens_to_sample": 200,
        "prompt": f"\n\nHuman: {prompt}\n\nAssistant:",
        **extra,
    }


def post(
    server: SimServer,
    path: str,
    body: Any,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        server.base_url + path,
        content=content,
        headers=HEADERS if headers is None else headers,
        timeout=timeout,
    )


def events(body: str) -> list[tuple[str, str]]:
    """(event, data) pairs of an SSE body in the simulator's LF framing."""
    out = []
    for block in body.split("\n\n"):
        if not block:
            continue
        fields = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((fields["event"], fields["data"]))
    return out


def streamed_text(body: str) -> str:
    return "".join(
        json.loads(data)["delta"]["text"]
        for name, data in events(body)
        if name == "content_block_delta"
    )


def assert_error(response: httpx.Response, status: int, error_type: str, message: str) -> None:
    assert response.status_code == status
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert message in body["error"]["message"]
    assert body["request_id"] == response.headers["request-id"]
    assert body["request_id"].startswith("req_")


# The official SDK as an independent client


def test_sdk_parses_the_stream(sdk: anthropic.Anthropic) -> None:
    """The SDK's stream helper folds the stream into a message with text, stop reason and usage."""
    texts: list[str] = []
    with sdk.messages.stream(
        model="claude-sim-1", max_tokens=200, messages=[{"role": "user", "content": "Hi there"}]
    ) as stream:
        texts.extend(stream.text_stream)
        message = stream.get_final_message()
    assert message.content[0].type == "text"
    assert message.content[0].text == "".join(texts) != ""
    assert message.stop_reason == "end_turn"
    assert message.model == "claude-sim-1"
    assert message.id.startswith("msg_")
    assert message.usage.output_tokens == len(texts)
    assert message.usage.input_tokens == 2  # ceil(len("Hi there") / 4)


def test_sdk_non_streaming_matches_the_stream(sdk: anthropic.Anthropic) -> None:
    """messages.create gives the same text, stop reason and usage as the stream of that body."""
    kwargs: Any = {
        "model": "claude-sim-1",
        "max_tokens": 5,
        "messages": [{"role": "user", "content": "x"}],
    }
    created = sdk.messages.create(**kwargs)
    with sdk.messages.stream(**kwargs) as stream:
        streamed = stream.get_final_message()
    assert created.content[0].type == "text"
    assert streamed.content[0].type == "text"
    assert created.content[0].text == streamed.content[0].text
    assert created.stop_reason == streamed.stop_reason == "max_tokens"
    assert created.usage.output_tokens == streamed.usage.output_tokens == 5


async def test_async_sdk_on_its_own_loop(server: SimServer) -> None:
    """The async SDK streams from the simulator, whose loop runs in another thread."""
    async with (
        anthropic.AsyncAnthropic(base_url=server.base_url, api_key=KEY, max_retries=0) as client,
        client.messages.stream(
            model="claude-sim-1", max_tokens=50, messages=[{"role": "user", "content": "async"}]
        ) as stream,
    ):
        message = await stream.get_final_message()
    assert message.stop_reason in ("end_turn", "max_tokens")


@pytest.mark.parametrize(
    ("kind", "exc_type", "status"),
    [
        ("overloaded", anthropic.OverloadedError, 529),
        ("rate_limited", anthropic.RateLimitError, 429),
        ("spend_limit", anthropic.RateLimitError, 429),
        ("invalid_request", anthropic.BadRequestError, 400),
        ("unauthorized", anthropic.AuthenticationError, 401),
        ("billing", anthropic.PaymentRequiredError, 402),
        ("forbidden", anthropic.PermissionDeniedError, 403),
        ("not_found", anthropic.NotFoundError, 404),
        ("conflict", anthropic.ConflictError, 409),
        ("too_large", anthropic.ContentTooLargeError, 413),
        ("server_error", anthropic.InternalServerError, 500),
        ("timeout_error", anthropic.GatewayTimeoutError, 504),
    ],
)
def test_sdk_raises_the_right_error(
    sdk: anthropic.Anthropic, kind: str, exc_type: type[anthropic.APIStatusError], status: int
) -> None:
    """Each injected HTTP error reaches the SDK as its own exception class, with a request-id."""
    with pytest.raises(exc_type) as caught:
        sdk.messages.create(
            model="claude-sim-1", max_tokens=10, messages=[{"role": "user", "content": f"<{kind}>"}]
        )
    assert caught.value.status_code == status
    assert caught.value.response.headers["request-id"].startswith("req_")


def test_sdk_raises_on_an_error_event(sdk: anthropic.Anthropic) -> None:
    """An overloaded_error event after some deltas makes the SDK's stream raise."""
    with (
        pytest.raises(anthropic.APIStatusError) as caught,
        sdk.messages.stream(
            model="claude-sim-1",
            max_tokens=50,
            messages=[{"role": "user", "content": "<overloaded_midstream>"}],
        ) as stream,
    ):
        stream.get_final_message()
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["type"] == "overloaded_error"


def test_sdk_count_tokens(sdk: anthropic.Anthropic) -> None:
    """count_tokens answers an estimate of the input: about a token per four characters."""
    counted = sdk.messages.count_tokens(
        model="claude-sim-1", messages=[{"role": "user", "content": "x" * 40}], system="y" * 8
    )
    assert counted.input_tokens == 12


# The wire format, with httpx


def test_messages_stream_wire_format(server: SimServer) -> None:
    """The stream has the API's events in order, exact framing, headers and cumulative usage."""
    response = post(server, "/v1/messages", messages_body(stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["request-id"].startswith("req_")
    assert not [h for h in response.headers if h.startswith("anthropic-ratelimit-")]
    assert response.text.endswith("\n\n")
    names = [name for name, _ in events(response.text)]
    n = names.count("content_block_delta")
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * n,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    payloads = [json.loads(data) for _, data in events(response.text)]
    start = payloads[0]["message"]
    assert start["model"] == "claude-sim-1"
    assert start["content"] == []
    assert start["stop_reason"] is None
    assert start["usage"]["output_tokens"] == 1
    # The final usage is whole (it supersedes message_start's), with n output tokens.
    assert payloads[-2]["usage"] == {**start["usage"], "output_tokens": n}
    assert start["usage"]["service_tier"] == "standard"
    assert payloads[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    deltas = [p["delta"]["text"] for p in payloads if p["type"] == "content_block_delta"]
    assert all(t.startswith(" ") or t in ".,!?" for t in deltas[1:])  # a token is a word


def test_messages_non_streaming_json(server: SimServer) -> None:
    """Without stream: true the answer is one message JSON with the same text as the stream."""
    plain = post(server, "/v1/messages", messages_body("plain")).json()
    streamed = post(server, "/v1/messages", messages_body("plain", stream=True)).text
    assert plain["type"] == "message"
    assert plain["role"] == "assistant"
    assert plain["content"] == [{"type": "text", "text": streamed_text(streamed)}]
    assert plain["stop_reason"] == "end_turn"
    assert plain["stop_sequence"] is None


def test_complete_stream(server: SimServer) -> None:
    """The legacy stream: completion events, a last empty one with stop_sequence, then the end."""
    response = post(server, "/v1/complete", complete_body(stream=True))
    assert response.status_code == 200
    payloads = [json.loads(data) for name, data in events(response.text)]
    assert {name for name, _ in events(response.text)} == {"completion"}
    *body, last = payloads
    assert all(p["stop_reason"] is None and p["model"] == "claude-2.1" for p in body)
    assert body[0]["completion"].startswith(" ")
    assert last["completion"] == ""
    assert last["stop_reason"] == "stop_sequence"
    assert last["stop"] == "\n\nHuman:"
    plain = post(server, "/v1/complete", complete_body()).json()
    assert plain["type"] == "completion"
    assert plain["id"].startswith("compl_")
    assert plain["completion"] == "".join(p["completion"] for p in body)


def test_complete_max_tokens(server: SimServer) -> None:
    """max_tokens_to_sample caps the legacy stream with stop_reason max_tokens."""
    response = post(server, "/v1/complete", complete_body(stream=True, max_tokens_to_sample=3))
    payloads = [json.loads(data) for _, data in events(response.text)]
    assert len(payloads) == 4
    assert payloads[-1]["stop_reason"] == "max_tokens"


# Determinism, caps and stop sequences


def test_text_is_a_function_of_seed_body_and_sighting() -> None:
    """Text is a function of (seed, body, how often the body was seen): a repeated body (the
    samples of a row) gets other text each time, a fresh server with the same seed replays the
    same sequence, and another seed another one."""

    def texts(config: SimConfig) -> list[str]:
        with SimServer(config) as sim:
            answers = [post(sim, "/v1/messages", messages_body("same")).json() for _ in range(3)]
            assert len({a["id"] for a in answers}) == 3
            return [a["content"][0]["text"] for a in answers]

    first = texts(CONFIG)
    assert len(set(first)) == 3
    assert texts(CONFIG) == first
    assert texts(CONFIG.model_copy(update={"seed": 1}))[0] != first[0]


def test_max_tokens_cuts_a_prefix(server: SimServer) -> None:
    """max_tokens cuts the reply to that many tokens, a prefix of the uncut one, with max_tokens."""
    full = post(server, "/v1/messages", messages_body("cap")).json()
    cut = post(server, "/v1/messages", messages_body("cap", max_tokens=4)).json()
    assert cut["stop_reason"] == "max_tokens"
    assert cut["usage"]["output_tokens"] == 4
    assert full["content"][0]["text"].startswith(cut["content"][0]["text"])


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequence(server: SimServer, stream: bool) -> None:
    """A stop sequence that the text would contain ends it just before, and is named."""
    prompt = f"stops {stream}"  # a body of its own: a repeated one gets other text
    full = post(server, "/v1/messages", messages_body(prompt)).json()["content"][0]["text"]
    stop = full.split(" ")[3]
    body = messages_body(prompt, stop_sequences=["zzz", " " + stop], stream=stream)
    response = post(server, "/v1/messages", body)
    if stream:
        text = streamed_text(response.text)
        final = json.loads(events(response.text)[-2][1])["delta"]
    else:
        text = response.json()["content"][0]["text"]
        final = response.json()
    assert text == full[: full.index(" " + stop)]
    assert final["stop_reason"] == "stop_sequence"
    assert final["stop_sequence"] == " " + stop


def test_legacy_stop_sequence(server: SimServer) -> None:
    """The legacy API stops before a stop sequence too, and names it in ``stop``."""
    full = post(server, "/v1/complete", complete_body("legacy stops")).json()["completion"]
    body = complete_body("legacy stops", stop_sequences=[" the"])
    answer = post(server, "/v1/complete", body).json()
    if " the" in full:
        assert answer["completion"] == full[: full.index(" the")]
        assert answer["stop_reason"] == "stop_sequence"
        assert answer["stop"] == " the"
    else:
        assert answer["completion"] == full


@given(
    seed=st.integers(0, 2**32),
    cap=st.integers(1, 60),
    stops=st.lists(st.sampled_from([" the", " of", ",", "a", "e m", "."]), max_size=3),
)
def test_generate_properties(seed: int, cap: int, stops: list[str]) -> None:
    """Replies are prefixes of the uncut reply, never hold a stop sequence, and respect the cap."""
    key = b"k%d" % seed
    full = generate(seed, key, min_tokens=1, max_tokens=50, cap=1000)
    reply = generate(seed, key, min_tokens=1, max_tokens=50, cap=cap, stop_sequences=stops)
    assert full.text.startswith(reply.text)
    assert len(reply.tokens) <= cap
    assert not any(s in reply.text for s in stops)
    if reply.stop_reason == "stop_sequence":
        assert reply.stop_sequence in stops
        assert full.text[len(reply.text) :].startswith(reply.stop_sequence or "?")


# Validation


@pytest.mark.parametrize(
    ("path", "body", "status", "error_type", "message"),
    [
        ("/v1/messages", b"{not json", 400, "invalid_request_error", "parsing the body"),
        ("/v1/messages", [1], 400, "invalid_request_error", "valid dictionary"),
        (
            "/v1/messages",
            {"model": "claude-x", "max_tokens": 5},
            400,
            "invalid_request_error",
            "messages: Field required",
        ),
        (
            "/v1/messages",
            {"messages": [{"role": "user", "content": "x"}], "max_tokens": 5},
            400,
            "invalid_request_error",
            "model: Field required",
        ),
        (
            "/v1/messages",
            {**messages_body(), "max_tokens": "10"},
            400,
            "invalid_request_error",
            "max_tokens: Input should be a valid integer",
        ),
        (
            "/v1/messages",
            {k: v for k, v in messages_body().items() if k != "max_tokens"},
            400,
            "invalid_request_error",
            "max_tokens: Field required",
        ),
        (
            "/v1/messages",
            messages_body(max_tokens=0),
            400,
            "invalid_request_error",
            "max_tokens: Input should be greater than or equal to 1",
        ),
        (
            "/v1/messages",
            messages_body(max_tokens=100_000),
            400,
            "invalid_request_error",
            "100000 > 64000",
        ),
        (
            "/v1/messages",
            {**messages_body(), "messages": []},
            400,
            "invalid_request_error",
            "at least one message",
        ),
        (
            "/v1/messages",
            {**messages_body(), "messages": [{"role": "system", "content": "x"}]},
            400,
            "invalid_request_error",
            "messages.0.role: Input should be 'user' or 'assistant'",
        ),
        (
            "/v1/messages",
            {**messages_body(), "messages": [{"role": "user", "content": ""}]},
            400,
            "invalid_request_error",
            "non-empty content",
        ),
        (
            "/v1/messages",
            {**messages_body(), "messages": [{"role": "user", "content": 5}]},
            400,
            "invalid_request_error",
            "messages.0.content",
        ),
        (
            "/v1/messages",
            {
                **messages_body(),
                "messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}],
            },
            400,
            "invalid_request_error",
            "text content blocks must be non-empty",
        ),
        (
            "/v1/messages",
            messages_body(temperature=1.5),
            400,
            "invalid_request_error",
            "temperature: Input should be less than or equal to 1",
        ),
        (
            "/v1/messages",
            messages_body(temperature=-0.1),
            400,
            "invalid_request_error",
            "temperature: Input should be greater than or equal to 0",
        ),
        (
            "/v1/messages",
            messages_body(stop_sequences="x"),
            400,
            "invalid_request_error",
            "stop_sequences: Input should be a valid list",
        ),
        (
            "/v1/messages",
            messages_body(max_tokens_to_sample=5),
            400,
            "invalid_request_error",
            "max_tokens_to_sample: Extra inputs are not permitted",
        ),
        (
            "/v1/messages",
            {**messages_body(), "model": "gpt-4o"},
            404,
            "not_found_error",
            "model: gpt-4o",
        ),
        (
            "/v1/complete",
            {**complete_body(), "prompt": "Hello\n\nAssistant:"},
            400,
            "invalid_request_error",
            'must start with "\n\nHuman:" turn',
        ),
        (
            "/v1/complete",
            {**complete_body(), "prompt": "\n\nHuman: Hello"},
            400,
            "invalid_request_error",
            'must end with "\n\nAssistant:" turn',
        ),
        (
            "/v1/complete",
            {"model": "claude-2.1", "prompt": "\n\nHuman: x\n\nAssistant:"},
            400,
            "invalid_request_error",
            "max_tokens_to_sample: Field required",
        ),
        (
            "/v1/complete",
            messages_body(),
            400,
            "invalid_request_error",
            "max_tokens: Extra inputs are not permitted",
        ),
        (
            "/v1/messages",
            messages_body("x" * 200_000),
            413,
            "request_too_large",
            "maximum allowed number of bytes",
        ),
        ("/v1/nothing", messages_body(), 404, "not_found_error", "Not Found"),
    ],
)
def test_validation(
    server: SimServer, path: str, body: Any, status: int, error_type: str, message: str
) -> None:
    """Invalid requests get the API's status, error type and a message naming the field."""
    assert_error(post(server, path, body), status, error_type, message)


@pytest.mark.parametrize(
    ("headers", "status", "error_type", "message"),
    [
        (
            {"anthropic-version": "2023-06-01"},
            401,
            "authentication_error",
            "x-api-key header is required",
        ),
        (
            {"x-api-key": "wrong", "anthropic-version": "2023-06-01"},
            401,
            "authentication_error",
            "invalid x-api-key",
        ),
        ({"x-api-key": KEY}, 400, "invalid_request_error", "anthropic-version: header is required"),
    ],
)
def test_header_checks(
    server: SimServer, headers: dict[str, str], status: int, error_type: str, message: str
) -> None:
    """A missing or wrong key is a 401; a missing anthropic-version a 400."""
    assert_error(
        post(server, "/v1/messages", messages_body(), headers=headers), status, error_type, message
    )


def test_bearer_key_and_legacy_prompt_with_system_text(server: SimServer) -> None:
    """Authorization: Bearer works as the key, and text before the first Human turn is allowed."""
    headers = {"authorization": f"Bearer {KEY}", "anthropic-version": "2023-06-01"}
    body = {**complete_body(), "prompt": "Be brief.\n\nHuman: Hi\n\nAssistant: Sure,"}
    assert post(server, "/v1/complete", body, headers=headers).status_code == 200


def test_wrong_method(server: SimServer) -> None:
    """A GET on an API path is refused with the API's error body."""
    response = httpx.get(server.base_url + "/v1/messages", headers=HEADERS)
    assert_error(response, 405, "invalid_request_error", "Method Not Allowed")


# Faults


@pytest.mark.parametrize(
    ("kind", "status", "error_type", "message"),
    [
        ("overloaded", 529, "overloaded_error", "Overloaded"),
        ("rate_limited", 429, "rate_limit_error", "rate limit"),
        (
            "spend_limit",
            429,
            "rate_limit_error",
            "You have reached your specified API usage limits",
        ),
        ("server_error", 500, "api_error", "Internal server error"),
        ("timeout_error", 504, "timeout_error", "timed out"),
        ("conflict", 409, "conflict_error", "onflict"),
        ("invalid_request", 400, "invalid_request_error", "Invalid request"),
        ("too_large", 413, "request_too_large", "maximum allowed number of bytes"),
        ("unauthorized", 401, "authentication_error", "invalid x-api-key"),
        ("forbidden", 403, "permission_error", "permission"),
        ("billing", 402, "billing_error", "credit balance"),
        ("not_found", 404, "not_found_error", "model: claude-sim-1"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_http_faults(
    server: SimServer, kind: str, status: int, error_type: str, message: str, stream: bool
) -> None:
    """Each HTTP fault answers the API's status and error body, streaming or not."""
    response = post(server, "/v1/messages", messages_body(f"<{kind}>", stream=stream))
    assert_error(response, status, error_type, message)
    if kind == "rate_limited":
        assert response.headers["retry-after"] == "7"
        # No limits configured: no limit headers, even on a (faulted) 429.
        assert "anthropic-ratelimit-requests-remaining" not in response.headers
    else:
        assert "retry-after" not in response.headers


def test_bad_gateway_is_html(server: SimServer) -> None:
    """bad_gateway answers 502 with an HTML page, as a proxy would, still with a request-id."""
    response = post(server, "/v1/messages", messages_body("<bad_gateway>", stream=True))
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert "502 Bad Gateway" in response.text
    assert response.headers["request-id"].startswith("req_")


def test_overloaded_midstream(server: SimServer) -> None:
    """overloaded_midstream: HTTP 200, after_deltas deltas, an error event, then the end."""
    response = post(server, "/v1/messages", messages_body("<overloaded_midstream>", stream=True))
    assert response.status_code == 200
    named = events(response.text)
    assert [n for n, _ in named].count("content_block_delta") == 2
    assert named[-1] == (
        "error",
        '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
    )


def test_overloaded_midstream_legacy(server: SimServer) -> None:
    """On /v1/complete the error event has the legacy shape, without the outer type."""
    response = post(server, "/v1/complete", complete_body("<overloaded_midstream>", stream=True))
    named = events(response.text)
    assert [n for n, _ in named] == ["completion", "completion", "error"]
    assert json.loads(named[-1][1]) == {
        "error": {"type": "overloaded_error", "message": "Overloaded"}
    }


def test_disconnect(server: SimServer) -> None:
    """disconnect closes the connection before any response."""
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        post(server, "/v1/messages", messages_body("<disconnect>", stream=True))


def test_disconnect_midstream(server: SimServer) -> None:
    """disconnect_midstream sends headers and some deltas, then cuts the connection."""
    received: list[bytes] = []
    with httpx.stream(
        "POST",
        server.base_url + "/v1/messages",
        json=messages_body("<disconnect_midstream>", stream=True),
        headers=HEADERS,
        timeout=5,
    ) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            received.extend(response.iter_bytes())
    assert b"".join(received).count(b"event: content_block_delta") == 2
    assert b"message_stop" not in b"".join(received)


def test_stall_delays_the_headers(server: SimServer) -> None:
    """stall holds the response for stall_s: a short read timeout fails, a long one succeeds."""
    with pytest.raises(httpx.ReadTimeout):
        post(server, "/v1/messages", messages_body("<stall>", stream=True), timeout=0.1)
    began = time.perf_counter()
    response = post(server, "/v1/messages", messages_body("<stall>", stream=True))
    assert time.perf_counter() - began >= STALL_S * 0.9
    assert events(response.text)[-1][0] == "message_stop"


def test_stall_midstream(server: SimServer) -> None:
    """stall_midstream goes silent for stall_s after after_deltas deltas, then finishes."""
    arrivals: list[tuple[float, bytes]] = []
    with httpx.stream(
        "POST",
        server.base_url + "/v1/messages",
        json=messages_body("<stall_midstream>", stream=True),
        headers=HEADERS,
        timeout=5,
    ) as response:
        for chunk in response.iter_bytes():
            arrivals.append((time.perf_counter(), chunk))
    body = b"".join(chunk for _, chunk in arrivals)
    assert body.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    before = next(t for t, _ in arrivals)
    after = next(t for t, c in arrivals if b"message_stop" in c)
    assert after - before >= STALL_S * 0.9


def test_malformed(server: SimServer) -> None:
    """malformed sends an event whose data is not JSON after after_deltas deltas."""
    response = post(server, "/v1/messages", messages_body("<malformed>", stream=True))
    named = events(response.text)
    bad = [i for i, (_, data) in enumerate(named) if data == "{not json"]
    assert len(bad) == 1
    assert [n for n, _ in named[: bad[0]]].count("content_block_delta") == 2
    assert named[-1][0] == "message_stop"


def test_truncated(server: SimServer) -> None:
    """truncated ends the body cleanly after after_deltas deltas, without the final events."""
    response = post(server, "/v1/messages", messages_body("<truncated>", stream=True))
    assert response.status_code == 200
    names = [n for n, _ in events(response.text)]
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
    ]
    legacy = post(server, "/v1/complete", complete_body("<truncated>", stream=True))
    assert all(json.loads(d)["stop_reason"] is None for _, d in events(legacy.text))


def test_midstream_faults_without_a_stream(server: SimServer) -> None:
    """Without stream: true, mid-stream faults happen to the whole answer."""
    overloaded = post(server, "/v1/messages", messages_body("<overloaded_midstream>"))
    assert_error(overloaded, 529, "overloaded_error", "Overloaded")
    truncated = post(server, "/v1/messages", messages_body("<truncated>"))
    assert truncated.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        truncated.json()
    with pytest.raises(httpx.RemoteProtocolError):
        post(server, "/v1/messages", messages_body("<disconnect_midstream>"))


def test_attempts_select_by_sighting(server: SimServer) -> None:
    """`attempts` counts sightings of the exact body: [1] faults the first, [2, 3] the next two."""
    first = messages_body("<first-only> a")
    assert [post(server, "/v1/messages", first).status_code for _ in range(3)] == [529, 200, 200]
    assert post(server, "/v1/messages", messages_body("<first-only> b")).status_code == 529
    middle = messages_body("<second-and-third>")
    assert [post(server, "/v1/messages", middle).status_code for _ in range(4)] == [
        200,
        500,
        500,
        200,
    ]


def test_match_selects_by_body(server: SimServer) -> None:
    """A rule with `match` leaves bodies without that text alone."""
    assert (
        post(server, "/v1/messages", messages_body("overloaded, but not marked")).status_code == 200
    )


def test_rate_is_a_deterministic_draw() -> None:
    """`rate` selects about that share of attempts, the same ones for the same seed."""
    rule = [Fault(kind="server_error", rate=0.3)]

    def chosen(seed: int) -> list[int]:
        return [
            i
            for i in range(2000)
            if select_fault(rule, seed=seed, body=b"", digest=b"%d" % i, attempt=1) is not None
        ]

    assert chosen(0) == chosen(0) != chosen(1)
    assert 500 < len(chosen(0)) < 700


def test_rate_over_http_repeats_with_the_seed() -> None:
    """Two servers with the same seed fault the same requests; the faults are counted."""
    config = SimConfig(ttft_s=0, token_interval_s=0, faults=[Fault(kind="overloaded", rate=0.5)])
    outcomes = []
    for _ in range(2):
        with SimServer(config) as sim:
            codes = [
                post(sim, "/v1/messages", messages_body(f"r{i}")).status_code for i in range(12)
            ]
            assert sim.stats.faults_by_kind == {"overloaded": codes.count(529)}
        outcomes.append(codes)
    assert outcomes[0] == outcomes[1]
    assert set(outcomes[0]) == {200, 529}


def test_every_fault_kind_is_covered() -> None:
    """The fault table above has a rule for every FaultKind in config.py."""
    assert {f.kind for f in FAULTS} == set(KINDS)


# Timing, stats and lifecycle


def test_plan_with_zero_delays_is_due_at_once() -> None:
    """With zero delays every step is due at 0 (one write); a stall shifts what follows it."""
    req = GenRequest("messages", "claude-x", 10, (), True, 1, b"k")
    turn = model_turn(SimConfig(min_output_tokens=5, max_output_tokens=5), req)
    script = messages_script(req, turn, "msg_1")
    steps, ending = plan(script, None, ttft_s=0, interval_s=0, stall_s=9)
    assert ending == "complete"
    assert {s.at for s in steps} == {0.0}
    stall = Fault(kind="stall_midstream", after_deltas=2)
    steps, _ = plan(script, stall, ttft_s=1, interval_s=0.5, stall_s=9)
    assert [s.at for s in steps if s.data in script.deltas] == [1.0, 1.5, 11.0, 11.5, 12.0]


def test_timing_and_first_content_record() -> None:
    """The first delta comes after ttft_s, the rest every token_interval_s; the time is recorded."""
    config = SimConfig(ttft_s=0.15, token_interval_s=0.03)
    with SimServer(config) as sim:
        began = time.perf_counter()
        response = post(sim, "/v1/messages", {**messages_body(stream=True), "max_tokens": 5})
        elapsed = time.perf_counter() - began
        timing = sim.stats.timings()[-1]
    assert 0.15 + 4 * 0.03 <= elapsed < 1.0
    assert timing.request_id == response.headers["request-id"]
    assert 0.14 <= timing.first_content - timing.received < 0.5
    assert sim.stats.first_content_at()[timing.request_id] == timing.first_content


def test_stats_count_requests_statuses_and_streams() -> None:
    """Stats count requests by path and status, and streams that reached their last event."""
    with SimServer(CONFIG) as sim:
        post(sim, "/v1/messages", messages_body(stream=True))
        post(sim, "/v1/complete", complete_body(stream=True))
        post(sim, "/v1/messages", messages_body("<overloaded>"))
        post(sim, "/v1/messages", messages_body("<truncated>", stream=True))
        stats = sim.stats
        assert stats.requests_by_path == {"/v1/messages": 3, "/v1/complete": 1}
        assert stats.requests_by_status == {200: 3, 529: 1}
        assert stats.faults_by_kind == {"overloaded": 1, "truncated": 1}
        assert stats.streams_completed == 2
        assert stats.total_requests == 4


def test_restart_and_fast_stop_during_a_stall() -> None:
    """A server restarts after stop, and stop does not wait for a stalled request."""
    sim = SimServer(SimConfig(stall_s=30, faults=[Fault(kind="stall")]))
    with pytest.raises(RuntimeError):
        _ = sim.base_url
    sim.start()
    sim.stop()
    sim.start()
    errors: list[BaseException] = []

    def stalled() -> None:
        try:
            post(sim, "/v1/messages", messages_body(), timeout=10)
        except httpx.HTTPError as exc:
            errors.append(exc)

    client = threading.Thread(target=stalled)
    client.start()
    wait_until(lambda: sim.stats.faults_by_kind == {"stall": 1}, "stalled request at the server")
    began = time.perf_counter()
    sim.stop()
    client.join(timeout=5)
    assert time.perf_counter() - began < 3
    assert len(errors) == 1


async def test_serve_runs_until_cancelled() -> None:
    """serve() answers on the given port until its task is cancelled."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    task = asyncio.create_task(serve(SimConfig(ttft_s=0, token_interval_s=0), port=port))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(50):
                try:
                    response = await client.post(
                        "/v1/messages", json=messages_body(), headers=HEADERS
                    )
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.02)
        assert response.status_code == 200
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
