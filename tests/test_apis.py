"""Request bodies for both APIs, the legacy prompt rule, and folding streams into Completions."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from batchrun.apis import APIS, Fold
from batchrun.apis.complete import CompleteFold, complete_prompt, validate_complete_prompt
from batchrun.apis.messages_fold import MessagesFold
from batchrun.apis.sse import ServerSentEvent, SSEDecoder
from batchrun.errors import FatalAPIError, PermanentError, RetryableError
from batchrun.job.request import RequestConfig
from batchrun.models import Completion, RequestItem
from tests.conftest import FIXTURES, STREAM_FILES, fixture_path

# The legacy streaming page of the API documentation, with its two SSE examples.
LEGACY_PAGE = fixture_path("legacy-complete-streaming.txt")


def user(text: Any) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


def item(*messages: dict[str, Any], system: str | None = None) -> RequestItem:
    return RequestItem(id="r1", sample=0, messages=messages, system=system)


def sse(name: str, payload: dict[str, Any] | str) -> ServerSentEvent:
    """An event as the decoder would give it; a dict payload is sent as JSON."""
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return ServerSentEvent(event=name, data=data)


def decode_file(path: Path) -> list[ServerSentEvent]:
    """The events of a captured stream, ended with a blank line as a live connection is."""
    return SSEDecoder().feed(path.read_bytes() + b"\n\n")


def new_fold(api: str) -> Fold:
    return APIS[api].new_fold()


def build_body(api: str, it: RequestItem, **request: Any) -> dict[str, Any]:
    """The body ``api`` makes of ``it`` for a job whose ``request:`` section holds ``request``."""
    return APIS[api].body(it, RequestConfig(api=api, **request).params)


def fold(api: Any, events: list[ServerSentEvent]) -> tuple[Fold, list[bool]]:
    """Feed every event to a fresh fold; the fold and what each feed returned."""
    folder = new_fold(api)
    return folder, [folder.feed(event) for event in events]


def blocks(completion: Completion) -> list[dict[str, Any]]:
    assert completion.content_json is not None
    result: list[dict[str, Any]] = json.loads(completion.content_json)
    return result


# --- request bodies ----------------------------------------------------------------------------


def test_request_paths() -> None:
    """Each API posts to its own endpoint."""
    assert APIS["messages"].path == "/v1/messages"
    assert APIS["complete"].path == "/v1/complete"


def test_messages_body_minimal() -> None:
    """A Messages body holds model, max_tokens, messages and stream, nothing unasked for."""
    body = build_body("messages", item(user("Hi")), model="m", max_tokens=16)
    assert body == {
        "model": "m",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "Hi"}],
        "stream": True,
    }


def test_messages_body_with_every_option() -> None:
    """System, stop sequences and sampling parameters are sent when given, zero included."""
    body = build_body(
        "messages",
        item(user("Hi"), assistant("Hello"), user("Again"), system="Be brief."),
        model="m",
        max_tokens=16,
        temperature=0.0,
        top_p=0.9,
        top_k=5,
        stop_sequences=("END",),
    )
    assert body == {
        "model": "m",
        "max_tokens": 16,
        "messages": [user("Hi"), assistant("Hello"), user("Again")],
        "system": "Be brief.",
        "stop_sequences": ["END"],
        "temperature": 0.0,
        "top_p": 0.9,
        "top_k": 5,
        "stream": True,
    }
    assert json.loads(json.dumps(body)) == body


def test_messages_body_omits_empty_system() -> None:
    """An empty system prompt is not sent."""
    assert "system" not in build_body(
        "messages", item(user("Hi"), system=""), model="m", max_tokens=1
    )


def test_complete_body_wraps_a_plain_prompt() -> None:
    """A legacy body wraps the prompt in Human/Assistant turns and uses max_tokens_to_sample."""
    body = build_body("complete", item(user("Hello, world!")), model="claude-2", max_tokens=256)
    assert body == {
        "model": "claude-2",
        "prompt": "\n\nHuman: Hello, world!\n\nAssistant:",
        "max_tokens_to_sample": 256,
        "stream": True,
    }


def test_complete_body_with_options() -> None:
    """Stop sequences and sampling parameters go into the legacy body too; None stays out."""
    body = build_body(
        "complete", item(user("Q")), model="m", max_tokens=8, top_k=3, stop_sequences=["\n\nHuman:"]
    )
    assert body == {
        "model": "m",
        "prompt": "\n\nHuman: Q\n\nAssistant:",
        "max_tokens_to_sample": 8,
        "stop_sequences": ["\n\nHuman:"],
        "top_k": 3,
        "stream": True,
    }


def test_complete_prompt_already_in_turns_is_kept() -> None:
    """A prompt that already starts with a Human turn is sent as it is."""
    prompt = "\n\nHuman: Hi\n\nAssistant: Sure:"
    assert complete_prompt(item(user(prompt))) == prompt


def test_complete_prompt_system_goes_first() -> None:
    """The system prompt precedes the first Human turn, wrapped or not."""
    assert complete_prompt(item(user("Q"), system="Be brief.")) == (
        "Be brief.\n\nHuman: Q\n\nAssistant:"
    )
    assert complete_prompt(item(user("\n\nHuman: Q\n\nAssistant:"), system="S")) == (
        "S\n\nHuman: Q\n\nAssistant:"
    )


def test_complete_prompt_from_several_messages() -> None:
    """Several messages alternate Human/Assistant turns and end with an open Assistant turn."""
    prompt = complete_prompt(item(user("Hi"), assistant("Hello"), user("Why?"), system="S"))
    assert prompt == "S\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Why?\n\nAssistant:"


def test_complete_prompt_final_assistant_message_is_a_prefill() -> None:
    """A last assistant message is continued, with no open turn after it."""
    prompt = complete_prompt(item(user("Name?"), assistant("My name is")))
    assert prompt == "\n\nHuman: Name?\n\nAssistant: My name is"


def test_complete_prompt_joins_text_blocks() -> None:
    """Content given as blocks contributes its text blocks, joined, and nothing else."""
    content = [
        {"type": "text", "text": "Look: "},
        {"type": "image", "source": {"type": "base64", "data": "..."}},
        {"type": "text", "text": "what is it?"},
    ]
    assert complete_prompt(item(user(content))) == "\n\nHuman: Look: what is it?\n\nAssistant:"
    prompt = complete_prompt(item(user(content), assistant([{"type": "text", "text": "A"}])))
    assert prompt == "\n\nHuman: Look: what is it?\n\nAssistant: A"


def test_complete_prompt_rejects_unknown_roles() -> None:
    """A role other than user or assistant cannot be written as a legacy turn."""
    with pytest.raises(ValueError, match="'system'"):
        complete_prompt(item(user("a"), {"role": "system", "content": "b"}))


# --- the legacy prompt rule --------------------------------------------------------------------


@pytest.mark.parametrize(
    "prompt",
    [
        "\n\nHuman: Hello\n\nAssistant:",
        "System text.\n\nHuman: Hello\n\nAssistant:",
        "\n\nHuman: Hello\n\nAssistant: Prefill",
        "\n\nHuman: a\n\nAssistant: b\n\nHuman: c\n\nAssistant:",
    ],
)
def test_valid_legacy_prompts(prompt: str) -> None:
    """Prompts in the documented shape pass."""
    assert validate_complete_prompt(prompt) is None


@pytest.mark.parametrize(
    ("prompt", "problem"),
    [
        ("Hello", "contain"),
        ("Human: Hello\n\nAssistant:", "contain"),
        ("\n\nHuman: Hello", "end with"),
        ("\n\nAssistant: x\n\nHuman: Hello\n\nAssistant:", "before"),
        ("\n\nHuman: a\n\nAssistant: b\n\nHuman: c", "not a"),
    ],
)
def test_invalid_legacy_prompts(prompt: str, problem: str) -> None:
    """Prompts outside the shape get a readable reason naming the turn marker."""
    message = validate_complete_prompt(prompt)
    assert message is not None
    assert problem in message
    assert r"\n\n" in message


_PLAIN = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\n"), max_size=8)


@given(
    st.lists(st.tuples(_PLAIN, _PLAIN), min_size=1, max_size=4),
    st.booleans(),
    st.none() | _PLAIN,
)
def test_every_built_prompt_is_valid(
    turns: list[tuple[str, str]], prefill: bool, system: str | None
) -> None:
    """What complete_prompt builds from a user-first conversation passes the legacy rule."""
    messages: list[dict[str, Any]] = []
    for question, answer in turns:
        messages += [user(question), assistant(answer)]
    if not prefill:
        messages.pop()
    assert validate_complete_prompt(complete_prompt(item(*messages, system=system))) is None


# --- Messages streams: the captured fixtures ---------------------------------------------------


def fold_fixture(name: str) -> tuple[Completion, Fold, list[bool]]:
    folder, fed = fold("messages", decode_file(FIXTURES / f"{name}.sse"))
    return folder.result(), folder, fed


def test_basic_response() -> None:
    """The plain stream folds to its text, stop reason, usage and one text block."""
    completion, folder, fed = fold_fixture("basic_response")
    assert completion == Completion(
        text="Hello there!",
        stop_reason="end_turn",
        stop_sequence=None,
        content_json='[{"type":"text","text":"Hello there!"}]',
        input_tokens=11,
        output_tokens=6,
        response_id="msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK",
        response_model="claude-3-opus-latest",
        usage_json='{"input_tokens":11,"output_tokens":6}',  # message_start's, then the delta's
    )
    assert sum(fed) == 3  # three text deltas; start, ping, stop and the rest are not output
    assert folder.done
    assert folder.output_tokens_seen == 6


def test_tool_use_response() -> None:
    """Tool input fragments, the first one empty, parse to the input object."""
    completion, _, fed = fold_fixture("tool_use_response")
    assert completion.text == "I'll check the current weather in Paris for you."
    assert completion.stop_reason == "tool_use"
    assert (completion.input_tokens, completion.output_tokens) == (377, 65)
    assert blocks(completion) == [
        {"type": "text", "text": "I'll check the current weather in Paris for you."},
        {
            "type": "tool_use",
            "id": "toolu_01NRLabsLyVHZPKxbKvkfSMn",
            "name": "get_weather",
            "caller": {"type": "direct"},
            "input": {"location": "Paris"},
        },
    ]
    assert sum(fed) == 7


def test_incomplete_partial_json_response() -> None:
    """Tool input cut off by max_tokens is kept raw beside an empty input, not an error."""
    completion, _, _ = fold_fixture("incomplete_partial_json_response")
    assert completion.stop_reason == "max_tokens"
    assert (completion.input_tokens, completion.output_tokens) == (450, 124)
    assert completion.text == (
        "I'll create a comprehensive tax guide for someone with multiple W2s and save it in a"
        " file called taxes.txt. Let me do that for you now."
    )
    tool = blocks(completion)[1]
    assert tool == {
        "type": "tool_use",
        "id": "toolu_01EKqbqmZrGRXy18eN7m9kvY",
        "name": "make_file",
        "input": {},
        "partial_json": '{"filename": "taxes.txt", "lines_of_text": [\n"# COMPREHENSIVE TAX GUIDE'
        ' FOR INDIVIDUALS WITH MULTIPLE W-2s",\n"",\n"## INTRODUCTION",\n"",\n"Filing taxes',
    }


def test_refusal_response() -> None:
    """A text block with no deltas gives empty text; stop reason refusal, zero output tokens."""
    completion, folder, fed = fold_fixture("refusal_response")
    assert completion.text == ""
    assert completion.stop_reason == "refusal"
    assert (completion.input_tokens, completion.output_tokens) == (20, 0)
    assert blocks(completion) == [{"type": "text", "text": ""}]
    assert not any(fed)
    assert folder.output_tokens_seen == 0


def test_fallback_response() -> None:
    """A fallback block without deltas is kept exactly as content_block_start sent it."""
    completion, _, _ = fold_fixture("fallback_response")
    assert completion.text == "Hello there!"
    assert completion.response_model == "claude-opus-4-7"
    assert blocks(completion) == [
        {
            "type": "fallback",
            "from": {"model": "claude-opus-4-7"},
            "to": {"model": "claude-sonnet-4-5"},
            "trigger": {"type": "refusal", "category": None},
        },
        {"type": "text", "text": "Hello there!"},
    ]


def test_fallback_credit_response() -> None:
    """Extra usage fields in message_delta do not disturb the token counts."""
    completion, _, _ = fold_fixture("fallback_credit_response")
    assert (completion.text, completion.stop_reason) == ("Hello there!", "end_turn")
    assert (completion.input_tokens, completion.output_tokens) == (25, 8)


def test_compaction_response() -> None:
    """compaction_delta's fields replace the compaction block's nulls."""
    completion, _, fed = fold_fixture("compaction_response")
    assert completion.text == "Hello there!"
    assert blocks(completion)[0] == {
        "type": "compaction",
        "content": "Earlier conversation summarized.",
        "encrypted_content": "EpwBCioIDxgCEAEYASJALd_opaque_compaction_payload",
    }
    assert sum(fed) == 2  # an unknown delta type counts as output


def test_stream_a_refusal_thinking_block() -> None:
    """Thinking deltas join, the signature is kept, and only the text block makes the text."""
    completion, folder, fed = fold_fixture("stream-a-refusal")
    assert completion.text == "Hi"
    assert completion.stop_reason == "refusal"
    assert (completion.input_tokens, completion.output_tokens) == (28, 106)
    assert blocks(completion) == [
        {
            "type": "thinking",
            "thinking": "Simple educational question about what a solar eclipse is. This is benign"
            " general knowledge \u2014 definitions are fine. Also the user called me"
            ' "claudius" \u2014 I\'m Claude. Minor correction or just roll with it politely.',
            "signature": "c3ludGhldGljLXNpZ25hdHVyZS1maXh0dXJlLWEtbm90LWEtcmVhbC1zaWduYXR1cmU=",
        },
        {"type": "text", "text": "Hi"},
    ]
    assert sum(fed) == 5  # four thinking deltas and one text delta; the signature is not output
    assert "\u2014" in (completion.content_json or "")  # not escaped: ensure_ascii=False
    assert folder.output_tokens_seen == 106


def test_stream_a_toolrefusal_server_tool_blocks() -> None:
    """server_tool_use input parses; a tool result block is kept as sent; input tokens are the
    last value sent, message_delta's included."""
    completion, _, _ = fold_fixture("stream-a-toolrefusal")
    assert completion.text == "Here's a summary of this year's solar eclipses and how"
    assert completion.input_tokens == 28  # message_start said 612; message_delta's 28 is last
    assert completion.output_tokens == 106
    server_tool, result, text = blocks(completion)
    assert server_tool == {
        "type": "server_tool_use",
        "id": "srvtoolu_fixture_a_0001",
        "name": "web_search",
        "input": {"query": "solar eclipse viewing safety news 2026"},
    }
    assert result["type"] == "web_search_tool_result"
    assert result["tool_use_id"] == "srvtoolu_fixture_a_0001"
    assert [r["url"] for r in result["content"]] == [
        "https://www.example.com/eclipse-viewing-safety",
        "https://www.example.com/eclipses-2026",
    ]
    assert text == {"type": "text", "text": completion.text}


def test_stream_b_fallback_long_text() -> None:
    """Fifteen text deltas join in order into the completion."""
    completion, _, fed = fold_fixture("stream-b-fallback")
    assert completion.text.startswith(" there! Happy to explain.\n\n**Solar eclipses** happen")
    assert completion.text.endswith("Just let me know what's sparking your interest!")
    assert len(completion.text) == 1312
    assert (completion.input_tokens, completion.output_tokens) == (31, 547)
    assert completion.response_id == "msg_fixture_b_0001"
    assert sum(fed) == 15


@pytest.mark.parametrize("path", STREAM_FILES, ids=lambda p: p.stem)
@given(data=st.data())
def test_fixture_folds_the_same_whatever_the_split(path: Path, data: st.DataObject) -> None:
    """Decoding a captured stream cut at arbitrary bytes and folding it gives the same result."""
    raw = path.read_bytes() + b"\n\n"
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=20)))
    decoder = SSEDecoder()
    folder = new_fold("messages")
    for a, b in itertools.pairwise([0, *cuts, len(raw)]):
        for event in decoder.feed(raw[a:b]):
            folder.feed(event)
    assert folder.result() == fold("messages", decode_file(path))[0].result()


@pytest.mark.parametrize("path", STREAM_FILES, ids=lambda p: p.stem)
def test_fixture_cut_before_message_stop_is_not_a_result(path: Path) -> None:
    """Without message_stop every fixture raises a retryable stream_error, text never leaks."""
    events = [e for e in decode_file(path) if e.event != "message_stop"]
    folder, _ = fold("messages", events)
    assert not folder.done
    seen = folder.output_tokens_seen
    with pytest.raises(RetryableError) as caught:
        folder.result()
    assert caught.value.error_type == "stream_error"
    assert folder.output_tokens_seen == seen  # what arrived stays counted on the fold


# --- Messages streams: synthetic events --------------------------------------------------------

START = sse(
    "message_start",
    {
        "type": "message_start",
        "message": {"id": "msg_1", "model": "m", "usage": {"input_tokens": 7, "output_tokens": 1}},
    },
)


def text_block(index: int = 0) -> ServerSentEvent:
    return sse(
        "content_block_start",
        {
            "type": "content_block_start",
            "index": index,
            "content_block": {"type": "text", "text": ""},
        },
    )


def delta(body: dict[str, Any], index: int = 0) -> ServerSentEvent:
    return sse(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": body}
    )


def message_delta(usage: dict[str, Any], stop_reason: str | None = "end_turn") -> ServerSentEvent:
    return sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": usage,
        },
    )


STOP = sse("message_stop", {"type": "message_stop"})


def test_usage_is_cumulative_last_value_wins() -> None:
    """Several message_delta usages replace each other, never add up; absent fields are kept."""
    folder, _ = fold(
        "messages",
        [
            START,
            text_block(),
            delta({"type": "text_delta", "text": "a"}),
            message_delta({"output_tokens": 5}),
            message_delta({"output_tokens": 9}),
            STOP,
        ],
    )
    completion = folder.result()
    assert (completion.input_tokens, completion.output_tokens) == (7, 9)


def test_stop_sequence_is_recorded() -> None:
    """message_delta's stop_sequence reaches the Completion."""
    stop = sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "stop_sequence", "stop_sequence": "END"},
            "usage": {"output_tokens": 2},
        },
    )
    folder, _ = fold("messages", [START, text_block(), stop, STOP])
    completion = folder.result()
    assert (completion.stop_reason, completion.stop_sequence) == ("stop_sequence", "END")


def test_output_tokens_seen_counts_deltas_until_usage_arrives() -> None:
    """Before any message_delta usage, output_tokens_seen is the number of content deltas."""
    folder = new_fold("messages")
    folder.feed(START)
    folder.feed(text_block())
    assert folder.output_tokens_seen == 0  # message_start's output_tokens is a placeholder
    for _ in range(3):
        folder.feed(delta({"type": "text_delta", "text": "x"}))
    assert folder.output_tokens_seen == 3
    folder.feed(message_delta({"output_tokens": 2}))
    assert folder.output_tokens_seen == 2


@pytest.mark.parametrize(
    ("body", "is_output"),
    [
        ({"type": "text_delta", "text": "a"}, True),
        ({"type": "thinking_delta", "thinking": "a"}, True),
        ({"type": "input_json_delta", "partial_json": "{"}, True),
        ({"type": "citations_delta", "citation": {"cited_text": "c"}}, True),
        ({"type": "future_delta", "value": 1}, True),
        ({"type": "signature_delta", "signature": "sig"}, False),
    ],
)
def test_which_deltas_count_as_output(body: dict[str, Any], is_output: bool) -> None:
    """Every content delta is model output except signature_delta."""
    folder = new_fold("messages")
    folder.feed(START)
    folder.feed(text_block())
    assert folder.feed(delta(body)) is is_output


def test_citations_are_collected_on_the_text_block() -> None:
    """citations_delta entries form the block's citations list, in order; the text is unaffected."""
    first = {"type": "char_location", "cited_text": "one", "document_index": 0}
    second = {"type": "char_location", "cited_text": "two", "document_index": 0}
    folder, _ = fold(
        "messages",
        [
            START,
            text_block(),
            delta({"type": "citations_delta", "citation": first}),
            delta({"type": "text_delta", "text": "Cited."}),
            delta({"type": "citations_delta", "citation": second}),
            message_delta({"output_tokens": 3}),
            STOP,
        ],
    )
    completion = folder.result()
    assert completion.text == "Cited."
    assert blocks(completion) == [{"type": "text", "text": "Cited.", "citations": [first, second]}]


def test_text_spans_several_text_blocks() -> None:
    """Completion.text joins the text blocks in index order, skipping other blocks."""
    thinking = sse(
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 1,
            "content_block": {"type": "thinking", "thinking": ""},
        },
    )
    folder, _ = fold(
        "messages",
        [
            START,
            text_block(0),
            delta({"type": "text_delta", "text": "A"}, 0),
            thinking,
            delta({"type": "thinking_delta", "thinking": "hmm"}, 1),
            text_block(2),
            delta({"type": "text_delta", "text": "B"}, 2),
            message_delta({"output_tokens": 3}),
            STOP,
        ],
    )
    assert folder.result().text == "AB"


def test_tool_use_without_deltas_keeps_its_input() -> None:
    """A tool_use block that gets no input_json_delta keeps the input it started with."""
    start = sse(
        "content_block_start",
        {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "tool_use", "id": "t", "name": "now", "input": {}},
        },
    )
    folder, _ = fold(
        "messages", [START, start, message_delta({"output_tokens": 1}, "tool_use"), STOP]
    )
    assert blocks(folder.result()) == [{"type": "tool_use", "id": "t", "name": "now", "input": {}}]


def test_unknown_events_and_pings_are_ignored() -> None:
    """Event types this code does not know, pings and their payloads change nothing."""
    noise = [
        sse("ping", "not json"),
        sse("future_event", "{oops"),
        sse("future_event", {"type": "x"}),
    ]
    folder, fed = fold(
        "messages",
        [
            START,
            *noise,
            text_block(),
            delta({"type": "text_delta", "text": "ok"}),
            *noise,
            message_delta({"output_tokens": 1}),
            STOP,
        ],
    )
    assert folder.result().text == "ok"
    assert fed.count(True) == 1


def test_nameless_event_uses_the_payload_type() -> None:
    """An event without an 'event:' line is dispatched by its JSON 'type'; others are ignored."""
    nameless = [ServerSentEvent(data=e.data) for e in [START, text_block()]]
    folder, _ = fold(
        "messages",
        [
            *nameless,
            ServerSentEvent(data="not json"),
            ServerSentEvent(data="[1]"),
            delta({"type": "text_delta", "text": "x"}),
            message_delta({"output_tokens": 1}),
            ServerSentEvent(data=STOP.data),
        ],
    )
    assert folder.done
    assert folder.result().text == "x"


def test_events_after_message_stop_are_ignored() -> None:
    """Once the final event is in, later events cannot change the result."""
    folder, fed = fold(
        "messages",
        [
            START,
            text_block(),
            delta({"type": "text_delta", "text": "a"}),
            STOP,
            delta({"type": "text_delta", "text": "b"}),
            sse("error", {"error": {"type": "api_error"}}),
        ],
    )
    assert folder.result().text == "a"
    assert fed[-2:] == [False, False]


# --- errors inside a stream --------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        {"error": {"type": "overloaded_error", "message": "Overloaded"}},
    ],
)
def test_error_event_midstream_is_retryable(payload: dict[str, Any]) -> None:
    """An overloaded error event, with or without the outer type, raises RetryableError."""
    folder = new_fold("messages")
    for event in [START, text_block(), delta({"type": "text_delta", "text": "partial"})]:
        folder.feed(event)
    with pytest.raises(RetryableError) as caught:
        folder.feed(sse("error", payload))
    assert caught.value.error_type == "overloaded_error"
    assert caught.value.message == "Overloaded"
    assert folder.output_tokens_seen == 1
    with pytest.raises(RetryableError):
        folder.result()  # the partial text is not a completion


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        ({"type": "api_error", "message": "Internal"}, RetryableError),
        ({"type": "invalid_request_error", "message": "bad"}, PermanentError),
        ({"type": "authentication_error", "message": "bad key"}, FatalAPIError),
        ({}, RetryableError),
    ],
)
def test_error_event_is_classified_like_the_http_error(error: dict[str, Any], kind: type) -> None:
    """Error events go through the API's error table; one without a type counts as api_error."""
    with pytest.raises(kind):
        new_fold("messages").feed(sse("error", {"type": "error", "error": error}))


@pytest.mark.parametrize("api", ["messages", "complete"])
def test_an_error_event_of_an_unknown_type_is_retried(api: str) -> None:
    """After HTTP 200 an error event is the stream's 529: a type the table does not know is
    retryable, not permanent (PROTOCOL.md)."""
    payload = {"type": "error", "error": {"type": "brand_new_error", "message": "try later"}}
    with pytest.raises(RetryableError) as caught:
        new_fold(api).feed(sse("error", payload))
    assert caught.value.error_type == "brand_new_error"


def test_an_error_event_message_is_not_cut_before_it_is_scrubbed() -> None:
    """The fold keeps the whole message: the seam scrubs secrets out, then caps it, so a key
    across a cut cannot leave its prefix behind."""
    message = "x" * 2000 + " sk-ant-secret"
    payload = {"type": "error", "error": {"type": "overloaded_error", "message": message}}
    with pytest.raises(RetryableError) as caught:
        new_fold("messages").feed(sse("error", payload))
    assert caught.value.message == message


def test_a_second_message_start_is_a_stream_error() -> None:
    """Two message_start events in one stream would splice two messages: a stream_error."""
    folder, _ = fold("messages", [START, text_block(), delta({"type": "text_delta", "text": "a"})])
    with pytest.raises(RetryableError, match="second message_start") as caught:
        folder.feed(START)
    assert caught.value.error_type == "stream_error"


def test_error_event_with_unreadable_data_is_a_stream_error() -> None:
    """An error event whose data is not JSON still fails the attempt, as a stream_error."""
    with pytest.raises(RetryableError) as caught:
        new_fold("messages").feed(sse("error", "Overloaded"))
    assert caught.value.error_type == "stream_error"


def test_malformed_json_is_a_short_stream_error() -> None:
    """Data that is not JSON on a known event raises stream_error without echoing the payload."""
    folder = new_fold("messages")
    folder.feed(START)
    folder.feed(text_block())
    folder.feed(delta({"type": "text_delta", "text": "ab"}))
    with pytest.raises(RetryableError) as caught:
        folder.feed(sse("content_block_delta", '{"type": "content_block_delta", ' + "x" * 10_000))
    assert caught.value.error_type == "stream_error"
    assert "content_block_delta" in caught.value.message
    assert len(caught.value.message) <= 300
    assert folder.output_tokens_seen == 1


@pytest.mark.parametrize("data", ["[1, 2]", '"text"', "null", "3"])
def test_non_object_json_is_a_stream_error(data: str) -> None:
    """JSON that is not an object on a known event raises stream_error."""
    with pytest.raises(RetryableError, match="not an object"):
        new_fold("messages").feed(sse("message_start", data))


@pytest.mark.parametrize(
    "event",
    [
        sse("message_start", {"type": "message_start"}),
        sse("content_block_start", {"type": "content_block_start", "index": 0}),
        delta({"type": "text_delta", "text": "orphan"}, index=3),
        delta({"type": "text_delta", "text": 5}),
        delta({"type": "input_json_delta"}),
    ],
)
def test_structurally_wrong_payloads_are_stream_errors(event: ServerSentEvent) -> None:
    """Payloads missing what the protocol promises raise stream_error, not a crash."""
    folder = new_fold("messages")
    folder.feed(START)
    folder.feed(text_block())
    with pytest.raises(RetryableError) as caught:
        folder.feed(event)
    assert caught.value.error_type == "stream_error"


# --- legacy completion streams -----------------------------------------------------------------


def seed_stream(after: str) -> bytes:
    """The SSE example that follows the line ``after`` in the legacy streaming page."""
    lines = LEGACY_PAGE.read_text(encoding="utf-8").splitlines()
    start = lines.index(after) + 1
    body = itertools.takewhile(
        lambda line: line == "" or line.startswith(("event:", "data:")), lines[start:]
    )
    return ("\n".join(body) + "\n\n").encode()


def test_legacy_seed_stream() -> None:
    """The documented legacy stream folds to its text, stop reason and model, without usage."""
    events = SSEDecoder().feed(seed_stream("Response"))
    folder, fed = fold("complete", events)
    assert isinstance(folder, CompleteFold)
    assert folder.done
    assert folder.result() == Completion(
        text=" Hello! My name is Claude.",
        stop_reason="stop_sequence",
        response_model="claude-2.0",
    )
    assert fed == [True, True, False, True, True, True, True, True, False]  # ping; empty last
    assert folder.output_tokens_seen == 7


def test_legacy_seed_error_example() -> None:
    """The documented legacy error (no outer type) raises RetryableError overloaded_error."""
    folder = new_fold("complete")
    events = SSEDecoder().feed(seed_stream("Example error"))
    assert [e.event for e in events] == ["completion", "error"]
    assert folder.feed(events[0])
    with pytest.raises(RetryableError) as caught:
        folder.feed(events[1])
    assert caught.value.error_type == "overloaded_error"
    assert folder.output_tokens_seen == 1


def test_legacy_stop_field_and_untyped_payloads() -> None:
    """Payloads without 'type' work; the final event's 'stop' becomes the stop sequence."""
    folder, _ = fold(
        "complete",
        [
            sse("completion", {"completion": "Hi", "stop_reason": None, "model": "claude-2.1"}),
            sse(
                "completion",
                {"completion": "", "stop_reason": "stop_sequence", "stop": "\n\nHuman:"},
            ),
        ],
    )
    completion = folder.result()
    assert (completion.text, completion.stop_sequence) == ("Hi", "\n\nHuman:")
    assert (completion.input_tokens, completion.output_tokens, completion.content_json) == (
        None,
        None,
        None,
    )


def test_legacy_text_on_the_final_event_counts() -> None:
    """A final event that carries text and the stop reason adds its text and ends the stream."""
    folder, fed = fold(
        "complete", [sse("completion", {"completion": " done", "stop_reason": "max_tokens"})]
    )
    assert fed == [True]
    assert folder.result().text == " done"


def test_legacy_stream_without_stop_reason_is_incomplete() -> None:
    """A legacy stream that closes before a stop_reason raises, and never yields its text."""
    folder, _ = fold("complete", [sse("completion", {"completion": "half", "stop_reason": None})])
    assert not folder.done
    with pytest.raises(RetryableError) as caught:
        folder.result()
    assert caught.value.error_type == "stream_error"
    assert folder.output_tokens_seen == 1


def test_legacy_malformed_payloads() -> None:
    """Non-JSON data or a non-string fragment on a completion event is a stream_error."""
    for event in [
        sse("completion", "{"),
        sse("completion", {"completion": 3, "stop_reason": None}),
    ]:
        with pytest.raises(RetryableError, match="completion"):
            new_fold("complete").feed(event)


def test_new_fold_types() -> None:
    """new_fold gives a fresh fold of the right kind, not yet done."""
    assert isinstance(new_fold("messages"), MessagesFold)
    assert isinstance(new_fold("complete"), CompleteFold)
    assert new_fold("messages") is not new_fold("messages")
    assert not new_fold("complete").done


@given(st.lists(st.text(max_size=5), max_size=20))
def test_text_deltas_join_exactly(fragments: list[str]) -> None:
    """Whatever the fragments, the text is their concatenation, in content_json too."""
    folder, _ = fold(
        "messages",
        [
            START,
            text_block(),
            *(delta({"type": "text_delta", "text": f}) for f in fragments),
            message_delta({"output_tokens": len(fragments)}),
            STOP,
        ],
    )
    completion = folder.result()
    assert completion.text == "".join(fragments)
    assert blocks(completion) == [{"type": "text", "text": completion.text}]


# --- feed_all: the events of one read at once -------------------------------------------

_HEAD = [
    sse("message_start", {"type": "message_start", "message": {"id": "m", "model": "x"}}),
    sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
    sse("content_block_start", {"index": 1, "content_block": {"type": "thinking"}}),
]
_MIDDLE = [
    sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "a"}}),
    sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "b\\u00e9"}}),
    sse("content_block_delta", {"index": 1, "delta": {"type": "text_delta", "text": "t"}}),
    sse("content_block_delta", {"index": 1, "delta": {"type": "thinking_delta", "thinking": "h"}}),
    sse(
        "content_block_delta", {"index": 1, "delta": {"type": "signature_delta", "signature": "s"}}
    ),
    sse("content_block_delta", {"index": 7, "delta": {"type": "text_delta", "text": "?"}}),
    sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta"}}),
    sse("content_block_delta", {"index": True, "delta": {"type": "text_delta", "text": "x"}}),
    sse("content_block_delta", '{"index": 0, "delta": {"type": "text_delta", "text": "c"}} {}'),
    sse("content_block_delta", '{"index": 0, "delta": {"type": "text_delta", "text": "\\ud800"}}'),
    sse("content_block_delta", ""),
    sse("content_block_delta", "not json"),
    sse("ping", {"type": "ping"}),
    sse("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}}),
    sse("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}),
]
_TAIL = [sse("content_block_stop", {"index": 0}), sse("message_stop", {"type": "message_stop"})]


def _outcome(feed: Any, fold: MessagesFold) -> tuple[Any, ...]:
    """What a fold ends with: its result or error, and what it counted on the way."""
    try:
        feed()
        ending: Any = fold.result()
    except (RetryableError, PermanentError) as exc:
        ending = (type(exc).__name__, exc.error_type, exc.message)
    return ending, fold.content, fold.output_tokens_seen


@example(middle=[_MIDDLE[0], _MIDDLE[2], _MIDDLE[1]], cuts=[])  # two blocks in one read
@given(
    middle=st.lists(st.sampled_from(_MIDDLE), max_size=12),
    cuts=st.lists(st.integers(0, 20), max_size=4),
)
def test_feed_all_is_feeding_one_event_at_a_time(
    middle: list[ServerSentEvent], cuts: list[int]
) -> None:
    """However a stream's events are grouped into reads, the fold ends the same: the batched
    decoding of text deltas takes exactly what single events would, in the same order."""
    events = [*_HEAD, *middle, *_TAIL]
    one = APIS["messages"].new_fold()
    expected = _outcome(lambda: [one.feed(e) for e in events], one)
    bounds = sorted({0, len(events), *(min(c, len(events)) for c in cuts)})
    reads = [events[a:b] for a, b in itertools.pairwise(bounds)]
    many = APIS["messages"].new_fold()
    assert _outcome(lambda: [many.feed_all(read) for read in reads], many) == expected


def test_a_read_of_text_deltas_counts_each_as_content() -> None:
    """Twenty text deltas in one read are twenty pieces of output, in order."""
    deltas = [
        sse("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": str(i)}})
        for i in range(20)
    ]
    folder = APIS["messages"].new_fold()
    folder.feed_all([*_HEAD[:2], *deltas, *_TAIL])
    assert folder.content == 20
    assert folder.result().text == "".join(str(i) for i in range(20))
