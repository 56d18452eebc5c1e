"""The SSE decoder: WHATWG parsing rules, any chunking, and the real captured streams."""

from __future__ import annotations

import itertools
import json
import re
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchrun.apis.sse import ServerSentEvent, SSEDecoder
from batchrun.errors import RetryableError
from tests.conftest import STREAM_FILES


def decode(*chunks: bytes | str) -> list[ServerSentEvent]:
    """Feed ``chunks`` to one decoder, then flush; all events in order."""
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in chunks:
        events += decoder.feed(chunk.encode() if isinstance(chunk, str) else chunk)
    return events + decoder.flush()


def decode_split(raw: bytes, cuts: list[int]) -> list[ServerSentEvent]:
    """Decode ``raw`` cut at the byte offsets ``cuts``."""
    bounds = [0, *sorted(cuts), len(raw)]
    return decode(*(raw[a:b] for a, b in itertools.pairwise(bounds)))


def ev(
    data: str, event: str = "message", id: str | None = None, retry: int | None = None
) -> ServerSentEvent:
    return ServerSentEvent(event=event, data=data, id=id, retry=retry)


# --- line endings ------------------------------------------------------------------------------


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_each_line_ending_ends_lines(eol: str) -> None:
    """LF, CRLF and CR each end a line and, doubled, an event."""
    text = f"event: a{eol}data: 1{eol}{eol}data: 2{eol}{eol}"
    assert decode(text) == [ev("1", "a"), ev("2")]


def test_mixed_line_endings_in_one_stream() -> None:
    """Line endings may change from line to line."""
    assert decode("data: a\rdata: b\r\ndata: c\n\r\n") == [ev("a\nb\nc")]


def test_cr_and_lf_split_across_chunks_are_one_line_ending() -> None:
    """A CR ending one chunk and a LF opening the next make one line ending, not a blank line."""
    assert decode(b"data: a\r", b"\ndata: b\r\n\r\n") == [ev("a\nb")]


def test_pending_cr_survives_an_empty_chunk() -> None:
    """A CR ending one chunk still pairs with a LF that arrives after an empty chunk."""
    assert decode(b"data: a\r", b"", b"\ndata: b\n\n") == [ev("a\nb")]


def test_pending_cr_then_lone_lf_chunk() -> None:
    """A chunk that is only the LF of a split CRLF yields nothing and consumes that LF."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\n") == [ev("a")]


def test_two_crs_are_two_line_endings() -> None:
    """CR CR is two line endings: the second one dispatches."""
    assert decode("data: a\r\r") == [ev("a")]


# --- fields ------------------------------------------------------------------------------------


def test_comments_are_ignored() -> None:
    """Lines starting with ':' are comments, anywhere, including between data lines."""
    assert decode(": keep-alive\ndata: a\n:\n: x: y\ndata: b\n\n") == [ev("a\nb")]


def test_comment_only_block_dispatches_nothing() -> None:
    """A block of comments alone is no event."""
    assert decode(":ping\n\n:\n\n") == []


def test_field_without_colon_has_empty_value() -> None:
    """'data' alone adds an empty data line; 'event' alone resets the type to 'message'."""
    assert decode("data\n\n") == [ev("")]
    assert decode("event\ndata: x\n\n") == [ev("x")]
    assert decode("data\ndata\n\n") == [ev("\n")]


def test_exactly_one_leading_space_is_stripped() -> None:
    """One space after the colon is dropped; a second one, or none, is kept as is."""
    assert decode("data:  two\n\n") == [ev(" two")]
    assert decode("data:none\n\n") == [ev("none")]
    assert decode("data: trailing \n\n") == [ev("trailing ")]
    assert decode("data:\tab\n\n") == [ev("\tab")]


def test_value_may_contain_colons() -> None:
    """Only the first colon separates field from value."""
    assert decode('data: {"a": "b:c"}\n\n') == [ev('{"a": "b:c"}')]


def test_data_lines_join_with_newline() -> None:
    """Several data lines join with LF, empty ones included."""
    assert decode("data: a\ndata:\ndata: c\n\n") == [ev("a\n\nc")]


def test_blank_line_dispatches_and_resets_the_event_type() -> None:
    """Each blank line ends an event; the event type does not carry over."""
    assert decode("event: x\ndata: 1\n\ndata: 2\n\n") == [ev("1", "x"), ev("2")]


def test_empty_data_buffer_is_not_dispatched() -> None:
    """A block with no data line is no event, and its event type is forgotten."""
    assert decode("event: lonely\n\ndata: x\n\n") == [ev("x")]
    assert decode("\n\n\n") == []


def test_empty_event_type_means_message() -> None:
    """'event:' with an empty value gives the default type."""
    assert decode("event:\ndata: x\n\n") == [ev("x")]


def test_id_carries_over_and_nul_is_ignored() -> None:
    """The last id applies to later events; an id with NUL is ignored; an empty id clears it."""
    text = "id: 1\ndata: a\n\ndata: b\n\nid: 2\x003\ndata: c\n\nid\ndata: d\n\n"
    assert decode(text) == [ev("a", id="1"), ev("b", id="1"), ev("c", id="1"), ev("d", id="")]


def test_id_without_data_still_updates_the_last_id() -> None:
    """An id in a block that dispatches nothing still sets the last event id."""
    assert decode("id: 7\n\ndata: a\n\n") == [ev("a", id="7")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1000", 1000),
        ("0", 0),
        ("10a", None),
        ("", None),
        (" 5", None),
        ("-5", None),
        ("\u0661\u0662", None),
        ("1.5", None),
    ],
)
def test_retry_counts_only_when_all_ascii_digits(value: str, expected: int | None) -> None:
    """retry is kept only when it is ASCII digits; anything else is ignored."""
    assert decode(f"retry: {value}\ndata: x\n\n") == [ev("x", retry=expected)]


def test_retry_belongs_to_its_event() -> None:
    """A retry value is attached to the event it came with, not to later ones."""
    assert decode("retry: 5\ndata: a\n\ndata: b\n\n") == [ev("a", retry=5), ev("b")]


def test_unknown_fields_are_ignored() -> None:
    """Fields other than event, data, id and retry do nothing, even case variants."""
    assert decode("foo: bar\nDATA: no\nData: no\ndata: yes\nevent : no\n\n") == [ev("yes")]


# --- BOM, UTF-8 --------------------------------------------------------------------------------


def test_bom_at_stream_start_is_stripped() -> None:
    """A UTF-8 BOM opening the stream is dropped, even split across chunks."""
    assert decode(b"\xef\xbb\xbfdata: x\n\n") == [ev("x")]
    assert decode(b"\xef", b"\xbb", b"\xbfdata: x\n\n") == [ev("x")]


def test_only_the_first_bom_is_stripped() -> None:
    """A second BOM is part of the field name, which is then unknown."""
    assert decode(b"\xef\xbb\xbf\xef\xbb\xbfdata: x\n\ndata: y\n\n") == [ev("y")]
    assert decode(b"data: \xef\xbb\xbfx\n\n") == [ev("\ufeffx")]


@pytest.mark.parametrize("text", ["caf\u00e9", "\u65e5\u672c\u8a9e", "\U0001f600 ok \U0001f680"])
def test_split_inside_a_multibyte_character(text: str) -> None:
    """Splitting the bytes at every offset, inside characters included, changes nothing."""
    raw = f"data: {text}\n\n".encode()
    for cut in range(len(raw) + 1):
        assert decode(raw[:cut], raw[cut:]) == [ev(text)]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    """Bytes that are not UTF-8 decode to U+FFFD."""
    assert decode(b"data: a\xffb\n\n") == [ev("a\ufffdb")]


def test_byte_at_a_time() -> None:
    """A stream fed one byte at a time gives the same events as in one piece."""
    raw = "event: e\r\nid: 9\r\ndata: \U0001f600\r\n: c\r\ndata: z\r\n\r\n".encode()
    assert decode(*(raw[i : i + 1] for i in range(len(raw)))) == decode(raw)


def test_long_line_in_many_chunks() -> None:
    """A line that trickles in over many chunks is reassembled once complete."""
    payload = "x" * 50_000
    raw = f"data: {payload}\n\n".encode()
    assert decode(*(raw[i : i + 7] for i in range(0, len(raw), 7))) == [ev(payload)]


# --- end of body -------------------------------------------------------------------------------


def test_flush_discards_an_unterminated_event() -> None:
    """At end of body, an event without its blank line is dropped, never dispatched."""
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b\n") == [ev("a")]
    assert decoder.flush() == []
    decoder = SSEDecoder()
    assert decoder.feed(b"data: partial") == []
    assert decoder.flush() == []


def test_flush_resets_the_pending_state() -> None:
    """After flush, leftovers of the old body do not leak into later input."""
    decoder = SSEDecoder()
    decoder.feed(b"event: old\ndata: stale\ndata: half")
    decoder.flush()
    assert decoder.feed(b"data: new\n\n") == [ev("new")]


def test_empty_chunk_yields_nothing() -> None:
    """An empty chunk is harmless."""
    assert SSEDecoder().feed(b"") == []


# --- properties --------------------------------------------------------------------------------

_LINE_TEXT = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"),
    max_size=12,
) | st.sampled_from(["\u00e9", "\U0001f600", "\u65e5\u672c", " x", ": y", '{"a": 1}'])
_EOL = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[ServerSentEvent]]:
    """A stream built from random events, with the events a decoder must give back."""
    lines: list[str] = []
    expected: list[ServerSentEvent] = []
    last_id: str | None = None
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            lines.append(":" + draw(_LINE_TEXT))
        name = draw(st.none() | _LINE_TEXT)
        if name is not None:
            lines.append("event: " + name)
        if draw(st.booleans()):
            last_id = draw(_LINE_TEXT.filter(lambda s: "\0" not in s))
            lines.append("id: " + last_id)
        data = draw(st.lists(_LINE_TEXT, min_size=1, max_size=4))
        for value in data:
            if draw(st.booleans()):
                lines.append(":" + draw(_LINE_TEXT))
            lines.append("data: " + value)
        lines.append("")
        expected.append(ServerSentEvent(name or "message", "\n".join(data), last_id))
    text = ""
    for line in lines:
        eol = draw(_EOL)
        if text.endswith("\r") and not line and eol == "\n":
            eol = "\r\n"  # CR then a lone LF would be one CRLF, merging away the blank line
        text += line + eol
    return text.encode(), expected


@given(streams(), st.data())
def test_random_streams_decode_the_same_whatever_the_split(
    stream: tuple[bytes, list[ServerSentEvent]], data: st.DataObject
) -> None:
    """Random events come back exactly, in one piece and cut at arbitrary byte offsets."""
    raw, expected = stream
    assert decode(raw) == expected
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=12))
    assert decode_split(raw, cuts) == expected


def _reference(text: str) -> list[ServerSentEvent]:
    """A slow, literal reading of the WHATWG algorithm, to compare against."""
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = re.split(r"\r\n|\r|\n", text)[:-1]  # the last piece has no line ending yet
    events: list[ServerSentEvent] = []
    data: list[str] = []
    event, last_id, retry = "", None, None
    for line in lines:
        if line == "":
            if data:
                events.append(ServerSentEvent(event or "message", "\n".join(data), last_id, retry))
            event, data, retry = "", [], None
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            last_id = value
        elif name == "retry" and re.fullmatch("[0-9]+", value):
            retry = int(value)
    return events


@given(
    st.text(alphabet=st.sampled_from(list("\r\n: adtiyrvenm\0\u00e91\U0001f600")), max_size=80),
    st.data(),
)
def test_arbitrary_text_matches_the_reference_parser(text: str, data: st.DataObject) -> None:
    """Any text, cut anywhere, decodes as a literal reading of the standard says."""
    raw = text.encode()
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=10))
    assert decode_split(raw, cuts) == _reference(text)


# --- real captured streams ---------------------------------------------------------------------

_MESSAGES_EVENTS = {
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
}


@pytest.mark.parametrize("path", STREAM_FILES, ids=lambda p: p.stem)
def test_fixture_decodes_to_json_events(path: Path) -> None:
    """Every captured stream decodes to one event per 'event:' line, each a JSON object of
    that type, when the body ends with a blank line as a live connection does."""
    raw = path.read_bytes() + b"\n\n"
    events = decode(raw)
    assert len(events) == raw.count(b"event: ")
    assert events[-1].event == "message_stop"
    for event in events:
        assert event.event in _MESSAGES_EVENTS
        assert json.loads(event.data)["type"] == event.event


@pytest.mark.parametrize("path", STREAM_FILES, ids=lambda p: p.stem)
def test_fixture_without_final_blank_line_loses_its_last_event(path: Path) -> None:
    """Replayed as stored, a file missing the final blank line loses message_stop at flush."""
    raw = path.read_bytes()
    complete = decode(raw + b"\n\n")
    if raw.endswith((b"\n\n", b"\r\n\r\n")):
        assert decode(raw) == complete
    else:
        assert decode(raw) == complete[:-1]


@pytest.mark.parametrize("path", STREAM_FILES, ids=lambda p: p.stem)
@given(data=st.data())
def test_fixture_decodes_the_same_whatever_the_split(path: Path, data: st.DataObject) -> None:
    """A captured stream cut at arbitrary byte offsets gives the same events as in one piece."""
    raw = path.read_bytes() + b"\n\n"
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=20))
    assert decode_split(raw, cuts) == decode(raw)


def test_fixtures_are_present() -> None:
    """The captured streams this suite relies on exist."""
    assert len(STREAM_FILES) >= 10


# --- the size bound ----------------------------------------------------------------------------


@pytest.mark.parametrize("line", [True, False], ids=["a line", "an event"])
def test_the_decoder_keeps_at_most_about_the_bound(line: bool) -> None:
    """Fed 64 MB without an end in 64 KB chunks, the decoder raises once past the bound and
    never holds more than a few times the bound."""
    chunk = b"z" * 65536 if line else b"data: " + b"z" * 65529 + b"\n"
    decoder = SSEDecoder(max_size=1024 * 1024)
    tracemalloc.start()
    try:

        def feed_64_mb() -> None:
            for _ in range(1024):
                decoder.feed(chunk)

        with pytest.raises(RetryableError) as raised:
            feed_64_mb()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert raised.value.error_type == "stream_error"
    assert peak < 4 * 1024 * 1024
    assert decoder.feed(b"event: ping\ndata: {}\n\n") == [("ping", "{}", None, None)]


def test_one_huge_chunk_holding_a_long_line_is_refused() -> None:
    """A single chunk larger than the bound, with its long line inside, raises too."""
    decoder = SSEDecoder(max_size=1000)
    with pytest.raises(RetryableError, match="a line"):
        decoder.feed(b"data: short\n" + b"data: " + b"q" * 2000 + b"\n\n")
    assert SSEDecoder(max_size=1000).feed(b"data: a\n\n" * 500)[-1].data == "a"
