"""The simulator speaks the API since 2026: version 2026-10-21, models, thinking, prompt caching,
tools, structured output and effort; seen from the official SDK (2.x, which sends 2026-10-21),
from httpx on the wire, and from batchrun's own client in a whole run.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import httpx
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchrun.job.schema import load_job
from batchrun.run import run_job
from batchrun.sim import SimConfig, SimServer
from batchrun.sim.schema import instance
from tests.conftest import JobWriter, no_sleep

KEY = "sk-sim-2026"
OLD = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
NEW = {"x-api-key": KEY, "anthropic-version": "2026-10-21"}
MODEL = "claude-sonnet-5-5"  # current: adaptive thinking, default sampling only
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "days"],
    },
}
SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "grade": {"enum": ["A", "B", "C"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 4},
        "source": {"$ref": "#/$defs/source"},
    },
    "required": ["answer", "confidence", "grade", "tags", "source"],
    "additionalProperties": False,
    "$defs": {
        "source": {
            "type": "object",
            "properties": {"page": {"type": "integer"}, "cited": {"type": "boolean"}},
            "required": ["page", "cited"],
        }
    },
}


class Clock:
    """The simulator's clock in a test: it moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def start(clock: Clock) -> Iterator[Callable[..., SimServer]]:
    """Start simulators with the given settings on ``clock``; stopped after the test."""
    started: list[SimServer] = []

    def start_sim(**config: Any) -> SimServer:
        settings = {"ttft_s": 0, "token_interval_s": 0, "api_key": KEY, **config}
        server = SimServer(SimConfig.model_validate(settings), clock=clock)
        server.start()
        started.append(server)
        return server

    yield start_sim
    for server in started:
        server.stop()


@pytest.fixture
def server(start: Callable[..., SimServer]) -> SimServer:
    return start()


@pytest.fixture
def sdk(server: SimServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.base_url, api_key=KEY, max_retries=0) as client:
        yield client


def body(prompt: str = "Hello", **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 2000,
        "messages": [{"role": "user", "content": prompt}],
        **extra,
    }


def post(server: SimServer, payload: Any, headers: dict[str, str] = NEW) -> httpx.Response:
    return httpx.post(server.base_url + "/v1/messages", json=payload, headers=headers, timeout=10)


def sse(text: str) -> list[dict[str, Any]]:
    """The JSON payloads of an SSE body in the simulator's LF framing."""
    out = []
    for block in text.split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                out.append(json.loads(line[6:]))
    return out


def assert_error(response: httpx.Response, status: int, error_type: str, message: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == error_type
    assert error["error"]["message"] == message
    assert error["request_id"] == response.headers["request-id"]


# Versions and models


@pytest.mark.parametrize(("name", "value"), [("temperature", 1.0), ("top_p", 0.9), ("top_k", 5)])
def test_2026_10_21_refuses_sampling_parameters_even_at_default(
    server: SimServer, name: str, value: float
) -> None:
    """On 2026-10-21 any sampling parameter is a 400 in the API's words; 2023-06-01 takes it."""
    payload = body(**{name: value}, model="claude-haiku-4-5")
    assert_error(
        post(server, payload),
        400,
        "invalid_request_error",
        f"{name}: Extra inputs are not permitted",
    )
    assert post(server, payload, OLD).status_code == 200


def test_2026_10_21_refuses_documents_from_the_assistant_and_citations_from_the_user(
    server: SimServer,
) -> None:
    """A document block in an assistant message and a cited user text block are 400s on the
    new version only."""
    document = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "x"},
    }
    turns = [
        {"role": "user", "content": "Read this."},
        {"role": "assistant", "content": [document]},
        {"role": "user", "content": "Now?"},
    ]
    response = post(server, {**body(), "messages": turns})
    assert_error(
        response,
        400,
        "invalid_request_error",
        "messages.1.content.0: document blocks are not permitted in assistant messages",
    )
    assert post(server, {**body(), "messages": turns}, OLD).status_code == 200
    cited = {"type": "text", "text": "As said.", "citations": [{"type": "char_location"}]}
    response = post(server, {**body(), "messages": [{"role": "user", "content": [cited]}]})
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("messages.0.content.0.citations:")
    uncited = {**cited, "citations": []}
    assert post(server, body(messages=[{"role": "user", "content": [uncited]}])).status_code == 200


def test_current_models_refuse_non_default_sampling_on_the_old_version(server: SimServer) -> None:
    """A model without sampling takes temperature 1.0 on 2023-06-01 but not 0.2."""
    assert post(server, body(temperature=1.0), OLD).status_code == 200
    response = post(server, body(temperature=0.2), OLD)
    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("temperature: claude-sonnet-5-5 ")
    assert post(server, body(model="claude-haiku-4-5", temperature=0.2), OLD).status_code == 200


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "claude-nonesuch-9"])
def test_known_models_only_answers_404_for_retired_and_unknown_models(
    start: Callable[..., SimServer], model: str
) -> None:
    """With models: known, a retired or unknown model is a 404 not_found_error "model: <id>"."""
    strict = start(models="known")
    assert_error(post(strict, body(model=model)), 404, "not_found_error", f"model: {model}")
    assert post(strict, body()).status_code == 200
    assert post(start(), body(model=model)).status_code == 200  # models: any serves it


def test_a_models_output_limit_bounds_max_tokens(server: SimServer) -> None:
    """A known model's max_output, not the simulator's default, bounds max_tokens."""
    assert post(server, body(max_tokens=128_000)).status_code == 200
    response = post(server, body(max_tokens=128_001))
    assert response.status_code == 400
    assert "128000, which is the maximum allowed number of output tokens" in response.text


# Thinking


def test_adaptive_thinking_streams_a_signed_thinking_block_before_the_text(
    sdk: anthropic.Anthropic,
) -> None:
    """thinking adaptive: the SDK accumulates a thinking block with a signature, then text;
    every thinking delta comes before the signature, and that before the first text delta."""
    with sdk.messages.stream(
        model=MODEL,
        max_tokens=1000,
        messages=[{"role": "user", "content": "Think first."}],
        thinking={"type": "adaptive"},
    ) as stream:
        kinds = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    thinking, text = final.content
    assert thinking.type == "thinking"
    assert text.type == "text"
    assert thinking.thinking
    assert thinking.signature
    assert text.text
    first_text = kinds.index("text_delta")
    assert kinds[:first_text] == ["thinking_delta"] * (first_text - 1) + ["signature_delta"]
    assert final.usage.output_tokens_details is not None
    words = len(thinking.thinking.split())
    assert final.usage.output_tokens_details.thinking_tokens >= words
    assert final.usage.output_tokens > final.usage.output_tokens_details.thinking_tokens


def test_thinking_is_off_by_default_and_on_for_adaptive_always_models(server: SimServer) -> None:
    """Without thinking a model answers text only; claude-fable-5-2 always thinks."""
    plain = post(server, body()).json()
    assert [b["type"] for b in plain["content"]] == ["text"]
    assert "output_tokens_details" not in plain["usage"]
    fable = post(server, body(model="claude-fable-5-2")).json()
    assert [b["type"] for b in fable["content"]] == ["thinking", "text"]


def test_enabled_thinking_checks_its_budget(server: SimServer) -> None:
    """thinking enabled: a budget under 1024 or not under max_tokens is a 400, and so is enabled
    on a model of adaptive thinking (the catalogue's kind); a valid one thinks within it."""
    low = post(server, body(thinking={"type": "enabled", "budget_tokens": 100}))
    assert low.status_code == 400
    assert "greater than or equal to 1024" in low.text
    over = post(server, body(max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 2000}))
    assert_error(
        over,
        400,
        "invalid_request_error",
        "`max_tokens` must be greater than `thinking.budget_tokens`.",
    )
    adaptive_only = post(server, body(thinking={"type": "enabled", "budget_tokens": 1024}))
    assert_error(
        adaptive_only,
        400,
        "invalid_request_error",
        "thinking.type: 'enabled' is not supported on claude-sonnet-5-5; use 'adaptive'",
    )
    ok = post(
        server, body(model="claude-haiku-4-5", thinking={"type": "enabled", "budget_tokens": 1024})
    )
    assert [b["type"] for b in ok.json()["content"]] == ["thinking", "text"]


def test_redacted_thinking_on_request_of_the_simulator(start: Callable[..., SimServer]) -> None:
    """redacted_thinking: true adds a redacted_thinking block (data, no deltas) after thinking."""
    sim = start(redacted_thinking=True)
    payloads = sse(post(sim, body(stream=True, thinking={"type": "adaptive"})).text)
    starts = [p["content_block"] for p in payloads if p["type"] == "content_block_start"]
    assert [b["type"] for b in starts] == ["thinking", "redacted_thinking", "text"]
    assert starts[1]["data"]
    assert not [p for p in payloads if p.get("index") == 1 and p["type"] == "content_block_delta"]


def test_forced_tool_use_and_thinking_do_not_mix(server: SimServer) -> None:
    """tool_choice any with thinking on is the API's 400."""
    response = post(
        server,
        body(thinking={"type": "adaptive"}, tools=[WEATHER], tool_choice={"type": "any"}),
    )
    assert_error(
        response,
        400,
        "invalid_request_error",
        "Thinking may not be enabled when tool_choice forces tool use.",
    )


# Prompt caching


def test_automatic_caching_writes_then_reads_within_the_ttl(
    sdk: anthropic.Anthropic, clock: Clock
) -> None:
    """Top-level cache_control: the first request writes its prompt, a repeat within 5 minutes
    reads it (input_tokens only the uncached part), one after the TTL writes again."""
    system = "You are a careful grader. " * 40
    prompt: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Grade this."}]

    def usage() -> anthropic.types.Usage:
        with sdk.messages.stream(
            model=MODEL,
            max_tokens=200,
            system=system,
            messages=prompt,
            cache_control={"type": "ephemeral"},
        ) as stream:
            return stream.get_final_message().usage

    total = sdk.messages.count_tokens(model=MODEL, system=system, messages=prompt).input_tokens
    first = usage()
    assert (first.cache_creation_input_tokens, first.cache_read_input_tokens) == (total, 0)
    assert first.cache_creation is not None
    assert first.cache_creation.ephemeral_5m_input_tokens == total
    assert first.cache_creation.ephemeral_1h_input_tokens == 0
    assert first.input_tokens == 0
    assert first.service_tier == "standard"
    clock.now += 299
    second = usage()
    assert (second.cache_creation_input_tokens, second.cache_read_input_tokens) == (0, total)
    clock.now += 299  # the read refreshed the entry
    assert usage().cache_read_input_tokens == total
    clock.now += 301
    assert usage().cache_creation_input_tokens == total


def test_a_block_breakpoint_caches_its_prefix_for_an_hour(server: SimServer, clock: Clock) -> None:
    """cache_control on the system block (ttl 1h) caches the system prompt alone: requests with
    other questions read it for an hour, and input_tokens counts the question."""
    system = [
        {
            "type": "text",
            "text": "Shared instructions. " * 50,
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
    ]
    first = post(server, body("Question one?", system=system)).json()["usage"]
    shared = first["cache_creation"]["ephemeral_1h_input_tokens"]
    assert shared > 0
    assert first["cache_creation_input_tokens"] == shared
    assert first["cache_creation"]["ephemeral_5m_input_tokens"] == 0
    assert first["input_tokens"] > 0
    clock.now += 3599
    other = post(server, body("A different question?", system=system)).json()["usage"]
    assert (other["cache_read_input_tokens"], other["cache_creation_input_tokens"]) == (shared, 0)
    clock.now += 3601
    assert (
        post(server, body("Third?", system=system)).json()["usage"]["cache_read_input_tokens"] == 0
    )


def test_no_cache_control_no_cache(server: SimServer) -> None:
    """Without cache_control nothing is written or read, however often a prompt repeats."""
    for _ in range(2):
        usage = post(server, body("Again")).json()["usage"]
        assert usage["cache_creation_input_tokens"] == usage["cache_read_input_tokens"] == 0
        assert usage["input_tokens"] > 0


# Tools, structured output, effort


def test_forced_tool_use_streams_input_json(sdk: anthropic.Anthropic) -> None:
    """tool_choice tool: one tool_use block, its input streamed as input_json_delta and of the
    input_schema's shape; stop_reason tool_use."""
    with sdk.messages.stream(
        model=MODEL,
        max_tokens=500,
        messages=[{"role": "user", "content": "Weather in Oslo?"}],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
    ) as stream:
        partial = [e.delta.partial_json for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert len(final.content) == 1
    call = final.content[0]
    assert call.type == "tool_use"
    assert call.name == "get_weather"
    assert call.id.startswith("toolu_")
    assert json.loads("".join(partial)) == call.input
    assert len(partial) > 1
    tool_input: dict[str, Any] = call.input  # type: ignore[assignment]
    assert isinstance(tool_input["city"], str)
    assert 1 <= tool_input["days"] <= 7
    assert tool_input.get("unit", "celsius") in ("celsius", "fahrenheit")


def test_auto_tool_choice_is_a_deterministic_draw(start: Callable[..., SimServer]) -> None:
    """tool_choice auto: some prompts call the tool (after a sentence), others answer text; the
    same seed draws the same way."""

    def kinds(sim: SimServer) -> list[list[str]]:
        out = []
        for i in range(12):
            answer = post(sim, body(f"Question {i}", tools=[WEATHER])).json()
            out.append([b["type"] for b in answer["content"]])
            if answer["stop_reason"] == "tool_use":
                assert out[-1] == ["text", "tool_use"]
        return out

    first = kinds(start())
    assert ["text", "tool_use"] in first
    assert ["text"] in first
    assert kinds(start()) == first


def test_json_schema_output_is_json_of_the_schemas_shape(sdk: anthropic.Anthropic) -> None:
    """output_config.format: the text block is JSON with every required property, enums from
    the enum, numbers in bounds, arrays within their sizes, and $refs followed."""
    for i in range(5):
        message = sdk.messages.create(
            model=MODEL,
            max_tokens=1000,
            messages=[{"role": "user", "content": f"Grade answer {i}."}],
            output_config={"format": {"type": "json_schema", "schema": SCHEMA}},
        )
        assert message.content[0].type == "text"
        value = json.loads(message.content[0].text)
        assert set(value) == set(SCHEMA["required"])  # type: ignore[arg-type]
        assert isinstance(value["answer"], str)
        assert 0 <= value["confidence"] <= 1
        assert value["grade"] in ("A", "B", "C")
        assert 1 <= len(value["tags"]) <= 4
        assert all(isinstance(t, str) for t in value["tags"])
        assert isinstance(value["source"]["page"], int)
        assert isinstance(value["source"]["cited"], bool)


def test_effort_scales_the_length_of_the_reply(server: SimServer) -> None:
    """The same prompt at low, high and max effort: the lower the effort, the shorter the reply
    (thinking and text alike)."""

    def lengths(effort: str) -> tuple[int, int]:
        answer = post(
            server, body("Effort?", thinking={"type": "adaptive"}, output_config={"effort": effort})
        ).json()
        return answer["usage"]["output_tokens_details"]["thinking_tokens"], answer["usage"][
            "output_tokens"
        ]

    low, high, top = lengths("low"), lengths("high"), lengths("max")
    assert low[0] < high[0] < top[0]
    assert low[1] < high[1] < top[1]
    bad = post(server, body(output_config={"effort": "extreme"}))
    assert bad.status_code == 400


def test_a_batch_answers_new_features_as_the_messages_api_would(server: SimServer) -> None:
    """A batched request with thinking and a tool gets the blocks a lone request gets, on the
    batch tier; 2026-10-21's rules apply in a batch too."""
    params = body("Batched", thinking={"type": "adaptive"}, tools=[WEATHER])
    requests = [
        {"custom_id": "a", "params": params},
        {"custom_id": "b", "params": {**params, "temperature": 1.0}},
    ]
    with httpx.Client(base_url=server.base_url, headers=NEW, timeout=10) as client:
        batch = client.post("/v1/messages/batches", json={"requests": requests}).json()
        lines = client.get(f"/v1/messages/batches/{batch['id']}/results").text.splitlines()
    results = {r["custom_id"]: r["result"] for r in map(json.loads, lines)}
    alone = post(server, params).json()
    message = results["a"]["message"]
    assert message["content"] == alone["content"]
    assert message["usage"]["service_tier"] == "batch"
    assert (
        results["b"]["error"]["error"]["message"] == "temperature: Extra inputs are not permitted"
    )


# The samples of a row (issue 15), through batchrun's own client


async def test_the_samples_of_a_row_differ_and_replay(
    write_job: JobWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """samples: 3 on the simulator: three different completions per row; a second run with the
    same seed gets the same set of completions per row."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")

    async def completions(name: str) -> dict[str, set[str]]:
        job = load_job(write_job(rows=2, name=name, extra={"request": {"samples": 3}}))
        outcome = await run_job(job, sleep=no_sleep, fresh=True)
        results = pl.read_parquet(outcome.run_dir / "results.parquet")
        assert results["status"].unique().to_list() == ["ok"]
        by_row: dict[str, set[str]] = {}
        for row in results.iter_rows(named=True):
            by_row.setdefault(row["id"], set()).add(row["completion"])
        return by_row

    first = await completions("job")
    assert {len(texts) for texts in first.values()} == {3}
    assert await completions("job") == first


def test_a_retry_gets_the_interrupted_reply_and_a_new_request_another(
    start: Callable[..., SimServer],
) -> None:
    """A faulted attempt takes no reply: the retry of its body gets the text the fault cut off,
    the next sighting of that body (another sample) gets other text."""
    sim = start(faults=[{"kind": "overloaded_midstream", "attempts": [1], "after_deltas": 2}])
    payload = body("Retry me", stream=True)
    cut = sse(post(sim, payload).text)
    assert cut[-1]["type"] == "error"
    texts = []
    for _ in range(2):
        events = sse(post(sim, payload).text)
        texts.append(
            "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
        )
    partial = "".join(e["delta"]["text"] for e in cut if e["type"] == "content_block_delta")
    assert partial
    assert texts[0].startswith(partial)
    assert texts[1] != texts[0]


def test_service_tier_is_reported_and_checked(server: SimServer) -> None:
    """service_tier auto or standard_only is served on the standard tier; another value is a 400."""
    for tier in ("auto", "standard_only"):
        answer = post(server, body("Tier?", service_tier=tier)).json()
        assert answer["usage"]["service_tier"] == "standard"
    bad = post(server, body(service_tier="priority"))
    assert_error(
        bad, 400, "invalid_request_error", "service_tier: Input should be 'auto' or 'standard_only'"
    )


def test_a_declared_web_search_is_drawn_and_streamed_as_server_tool_blocks(
    sdk: anthropic.Anthropic,
) -> None:
    """A web_search server tool: some replies search first (a server_tool_use block streamed as
    input_json_delta, a web_search_tool_result block, then the text) and count the search in
    usage.server_tool_use; the others count none."""
    search: Any = {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}
    counts = []
    for i in range(8):
        with sdk.messages.stream(
            model=MODEL,
            max_tokens=500,
            messages=[{"role": "user", "content": f"Search {i}?"}],
            tools=[search],
        ) as stream:
            final = stream.get_final_message()
        assert final.usage.server_tool_use is not None
        searches = final.usage.server_tool_use.web_search_requests
        counts.append(searches)
        kinds = [b.type for b in final.content]
        if searches:
            assert kinds == ["server_tool_use", "web_search_tool_result", "text"]
            use, found = final.content[0], final.content[1]
            assert use.type == "server_tool_use"
            assert found.type == "web_search_tool_result"
            assert use.name == "web_search"
            assert isinstance(use.input["query"], str)
            assert found.tool_use_id == use.id
            assert isinstance(found.content, list)
            assert all(r.url.startswith("https://") for r in found.content)
        else:
            assert kinds == ["text"]
        assert final.stop_reason == "end_turn"
    assert set(counts) == {0, 1}


# The schema generator, on schemas drawn at random

_LEAVES = st.one_of(
    st.builds(
        lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span},
        st.integers(-50, 50),
        st.integers(0, 20),
    ),
    st.just({"type": "number", "minimum": 0.5, "maximum": 2.5}),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.builds(
        lambda lo, span: {"type": "string", "minLength": lo, "maxLength": lo + span},
        st.integers(0, 10),
        st.integers(0, 30),
    ),
    st.lists(st.text(max_size=5), min_size=1, max_size=4, unique=True).map(lambda e: {"enum": e}),
)


def _compound(children: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    objects = st.dictionaries(
        st.text("abcxyz", min_size=1, max_size=4), children, max_size=4
    ).flatmap(
        lambda props: st.builds(
            lambda required: {"type": "object", "properties": props, "required": required},
            st.lists(st.sampled_from(sorted(props)), unique=True) if props else st.just([]),
        )
    )
    arrays = st.builds(
        lambda items, lo, span: {
            "type": "array",
            "items": items,
            "minItems": lo,
            "maxItems": lo + span,
        },
        children,
        st.integers(0, 3),
        st.integers(0, 3),
    )
    choices = st.lists(children, min_size=1, max_size=3).map(lambda options: {"anyOf": options})
    return st.one_of(objects, arrays, choices)


SCHEMAS = st.recursive(_LEAVES, _compound, max_leaves=12)


def conforms(value: Any, schema: dict[str, Any]) -> bool:
    """A hand check of the keywords the generator promises (not a general validator)."""
    if "anyOf" in schema:
        return any(conforms(value, option) for option in schema["anyOf"])
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema["type"]
    if kind == "object":
        props = schema["properties"]
        return (
            isinstance(value, dict)
            and set(schema["required"]) <= set(value) <= set(props)
            and all(conforms(v, props[k]) for k, v in value.items())
        )
    if kind == "array":
        return (
            isinstance(value, list)
            and schema["minItems"] <= len(value) <= schema["maxItems"]
            and all(conforms(v, schema["items"]) for v in value)
        )
    if kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return ok and schema["minimum"] <= value <= schema["maximum"]
    if kind == "number":
        return isinstance(value, float) and schema["minimum"] <= value <= schema["maximum"]
    if kind == "string":
        return isinstance(value, str) and schema["minLength"] <= len(value) <= schema["maxLength"]
    if kind == "boolean":
        return isinstance(value, bool)
    return value is None


@given(schema=SCHEMAS, seed=st.integers(0, 2**32))
def test_the_schema_generator_makes_values_of_the_schemas_shape(
    schema: dict[str, Any], seed: int
) -> None:
    """Whatever the schema (nested objects, arrays, anyOf, enums, bounds), the value conforms,
    survives a JSON round trip, and the same seed makes the same value."""
    value = instance(schema, random.Random(seed))
    assert conforms(value, schema), (schema, value)
    assert json.loads(json.dumps(value)) == value
    assert instance(schema, random.Random(seed)) == value


def test_a_growing_conversation_reads_its_earlier_prefix(server: SimServer) -> None:
    """Automatic caching on a conversation: the next turn reads what the previous turn wrote
    (found by the lookback from the new breakpoint) and writes only the new part."""
    first_turn = [{"role": "user", "content": "Tell me about rivers. " * 30}]
    first = post(server, body(messages=first_turn, cache_control={"type": "ephemeral"})).json()
    written = first["usage"]["cache_creation_input_tokens"]
    assert written > 0
    assert first["usage"]["cache_read_input_tokens"] == 0
    reply = first["content"][0]["text"]
    second_turn = [
        *first_turn,
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "And lakes?"},
    ]
    second = post(server, body(messages=second_turn, cache_control={"type": "ephemeral"})).json()
    usage = second["usage"]
    assert usage["cache_read_input_tokens"] == written
    assert usage["cache_creation_input_tokens"] > 0
    total = usage["input_tokens"] + usage["cache_read_input_tokens"]
    assert (
        total + usage["cache_creation_input_tokens"]
        == httpx.post(
            server.base_url + "/v1/messages/count_tokens",
            json={"model": MODEL, "messages": second_turn},
            headers=NEW,
            timeout=10,
        ).json()["input_tokens"]
    )
