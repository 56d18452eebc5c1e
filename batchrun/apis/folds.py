"""Streamed answers folded into results: the events of one attempt in, a Completion out.

Part of stage 3 (call), between the SSE decoder and the client: :func:`new_fold` gives a
:class:`Fold` that consumes the decoded events of one attempt at one of the two APIs
(:mod:`batchrun.apis`) and yields a :class:`~batchrun.records.Completion`;
:func:`message_completion` does the same for a non-streaming answer (Message Batches). Pure code:
no I/O, no retries, no clocks. A stream that fails (an ``error`` event, a malformed payload, no
final event) raises an :class:`~batchrun.errors.AttemptError`; its partial text never becomes a
result.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol, assert_never

import msgspec

from batchrun.apis.bodies import Api
from batchrun.apis.sse import ServerSentEvent
from batchrun.errors import AttemptError, RetryableError, api_error
from batchrun.models import Completion

__all__ = ["CompleteFold", "Fold", "MessagesFold", "message_completion", "new_fold"]

_MAX_MESSAGE = 300  # error messages stay short: never the whole payload
_decode = msgspec.json.Decoder().decode


class _TextDelta(msgspec.Struct, gc=False):
    type: Literal["text_delta"]
    text: str


class _DeltaEvent(msgspec.Struct, gc=False):
    """A text delta, the shape of nearly every event of a stream: decoded straight into this,
    no dicts; any other shape fails to decode."""

    index: int
    delta: _TextDelta


_delta_decoder = msgspec.json.Decoder(_DeltaEvent)


class Fold(Protocol):
    """Consumes one attempt's events; ``result()`` once the stream has ended."""

    done: bool
    output_tokens_seen: int | None

    content: int  # events so far that carried model output (for ttft and chunk times)

    def feed(self, event: ServerSentEvent) -> bool:
        """Take one event; ``True`` iff it carried model output."""
        ...

    def feed_all(self, events: Sequence[ServerSentEvent]) -> None:
        """Take the events of one read, in order (``content`` counts those with output)."""
        ...

    def result(self) -> Completion:
        """The completion; ``RetryableError("stream_error")`` if the final event never came."""
        ...


def new_fold(api: Api) -> Fold:
    """A fresh fold for one attempt at ``api``."""
    if api == "messages":
        return MessagesFold()
    if api == "complete":
        return CompleteFold()
    assert_never(api)


def _stream_error(message: str) -> RetryableError:
    return RetryableError("stream_error", message[:_MAX_MESSAGE])


def _loads(data: str) -> Any:
    """``json.loads``, several times faster for what it accepts: msgspec decodes, and whatever
    msgspec refuses (NaN, 1e400, lone surrogates, deep nesting, malformed text) gets the stdlib's
    own answer or error."""
    try:
        return _decode(data)
    except (msgspec.DecodeError, ValueError, RecursionError):
        return json.loads(data)


def _payload(name: str, data: str) -> dict[str, Any]:
    try:
        payload = _loads(data)
    except (ValueError, RecursionError) as exc:
        raise _stream_error(f"{name} event data is not JSON ({type(exc).__name__})") from exc
    if not isinstance(payload, dict):
        raise _stream_error(f"{name} event data is a JSON {type(payload).__name__}, not an object")
    return payload


def _error_from(payload: dict[str, Any]) -> AttemptError:
    """The error an ``error`` event announces; ``error.type`` missing counts as ``api_error``."""
    error = payload.get("error")
    if not isinstance(error, dict):
        error = {}
    error_type = error.get("type")
    message = error.get("message")
    return api_error(
        error_type if isinstance(error_type, str) and error_type else "api_error",
        (message if isinstance(message, str) else "error event in the stream")[:_MAX_MESSAGE],
    )


def _int(obj: Any, key: str) -> int | None:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(obj: Any, key: str) -> str | None:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if isinstance(value, str) else None


class _FoldBase:
    """Dispatch shared by both folds: event name to handler, JSON parsing, error tagging."""

    _events: ClassVar[frozenset[str]] = frozenset()

    def __init__(self) -> None:
        self.done = False
        self.output_tokens_seen: int | None = 0
        self.content = 0

    def feed_all(self, events: Sequence[ServerSentEvent]) -> None:
        for event in events:
            self.feed(event)

    def feed(self, event: ServerSentEvent) -> bool:
        if self.done:
            return False  # the server closes after its final event; anything later is noise
        name = event.event
        try:
            if name in self._events:
                payload = _payload(name, event.data)
            elif name == "message":
                # No `event:` line: fall back on the payload's own "type", if it has one.
                try:
                    payload = _loads(event.data)
                except (ValueError, RecursionError):
                    return False
                kind = payload.get("type") if isinstance(payload, dict) else None
                if not isinstance(kind, str) or kind not in self._events:
                    return False
                name = payload["type"]
            else:
                return False  # ping, and event types newer than this code
            if name == "error":
                raise _error_from(payload)
            if not self._handle(name, payload):
                return False
            self.content += 1
            return True
        except AttemptError as exc:
            exc.output_tokens_seen = self.output_tokens_seen
            raise

    def _handle(self, name: str, payload: dict[str, Any]) -> bool:
        raise NotImplementedError

    def _incomplete(self, what: str) -> RetryableError:
        exc = _stream_error(f"the stream ended before its final event ({what})")
        exc.output_tokens_seen = self.output_tokens_seen
        return exc


@dataclass(slots=True)
class _Block:
    """One content block: as ``content_block_start`` sent it, plus its deltas so far."""

    data: dict[str, Any]
    appended: dict[str, list[str]] = field(default_factory=dict)  # text/thinking fragments
    json_parts: list[str] | None = None  # input_json_delta fragments

    def append(self, key: str, fragment: str) -> None:
        self.extend(key, (fragment,))

    def extend(self, key: str, fragments: Iterable[str]) -> None:
        parts = self.appended.get(key)
        if parts is None:
            start = self.data.get(key)
            parts = self.appended[key] = [start] if isinstance(start, str) else []
        parts.extend(fragments)

    def final(self) -> dict[str, Any]:
        """The block as a non-streaming response holds it."""
        block = dict(self.data)
        for key, parts in self.appended.items():
            block[key] = "".join(parts)
        if self.json_parts is not None:
            raw = "".join(self.json_parts)
            try:
                block["input"] = json.loads(raw) if raw.strip() else {}
            except ValueError:
                # Cut off mid-input (max_tokens): keep what came, unparsed, rather than fail.
                block["input"] = {}
                block["partial_json"] = raw
        return block


class MessagesFold(_FoldBase):
    """Folds a Messages stream (``message_start`` ... ``message_stop``) into a Completion.

    Every ``content_block_delta`` is model output except ``signature_delta``, which is a
    verification token the server attaches to a thinking block, not something the model wrote;
    delta types unknown to this code count as output, since new ones have so far always been.
    Unknown delta types merge their fields (all but ``type``) into the block, replacing what the
    block had: ``compaction_delta`` fills in the compaction block's ``content`` and
    ``encrypted_content`` this way. Usage counts are cumulative: the last value wins.
    """

    _events = frozenset(
        {
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
            "error",
        }
    )

    def __init__(self) -> None:
        super().__init__()
        self._blocks: dict[int, _Block] = {}
        self._deltas = 0
        self._usage_seen = False  # message_start's output_tokens is a placeholder; this is not
        self._id: str | None = None
        self._model: str | None = None
        self._input_tokens: int | None = None
        self._output_tokens: int | None = None
        self._stop_reason: str | None = None
        self._stop_sequence: str | None = None

    def feed(self, event: ServerSentEvent) -> bool:
        # Nearly every event is a text delta: take it in one step. Anything this does not
        # recognise goes the general way, which decides (and raises) as it always did.
        if event.event == "content_block_delta":
            before = self.content
            self._delta_run([event])
            return self.content > before
        return super().feed(event)

    def feed_all(self, events: Sequence[ServerSentEvent]) -> None:
        run: list[ServerSentEvent] = []
        for event in events:
            if event.event == "content_block_delta":
                run.append(event)
                continue
            if run:
                self._delta_run(run)
                run = []
            super().feed(event)
        if run:
            self._delta_run(run)

    def _delta_run(self, run: list[ServerSentEvent]) -> None:
        """Consecutive ``content_block_delta`` events, nearly always text deltas of one block:
        decoded in one call, one JSON value per line (so each event's data stands or falls
        alone, as with ``json.loads``), into structs, and appended at once. A run that holds
        anything else goes the general way, event by event."""
        decoded: list[_DeltaEvent] | None = None
        if not self.done:
            with contextlib.suppress(msgspec.DecodeError, ValueError, RecursionError):
                decoded = _delta_decoder.decode_lines("\n".join([event.data for event in run]))
        index = decoded[0].index if decoded else None
        block = self._blocks.get(index) if index is not None else None
        if (
            block is None
            or decoded is None
            or len(decoded) != len(run)  # a blank data line is skipped by decode_lines
            or any(payload.index != index for payload in decoded)
        ):
            for event in run:
                super().feed(event)
            return
        block.extend("text", [payload.delta.text for payload in decoded])
        self._deltas += len(decoded)
        self.content += len(decoded)
        if not self._usage_seen:
            self.output_tokens_seen = self._deltas

    def _handle(self, name: str, payload: dict[str, Any]) -> bool:
        if name == "content_block_delta":
            return self._delta(payload)
        if name == "content_block_start":
            index, block = payload.get("index"), payload.get("content_block")
            if not isinstance(index, int) or not isinstance(block, dict):
                raise _stream_error("content_block_start without an index and a content_block")
            self._blocks[index] = _Block(block)
        elif name == "message_start":
            message = payload.get("message")
            if not isinstance(message, dict):
                raise _stream_error("message_start without a message object")
            self._id, self._model = _str(message, "id"), _str(message, "model")
            self._usage(message.get("usage"))
        elif name == "message_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict):
                if "stop_reason" in delta:
                    self._stop_reason = _str(delta, "stop_reason")
                if "stop_sequence" in delta:
                    self._stop_sequence = _str(delta, "stop_sequence")
            if self._usage(payload.get("usage")):
                self._usage_seen = True
                self.output_tokens_seen = self._output_tokens
        elif name == "message_stop":
            self.done = True
        return False  # content_block_stop needs nothing: input JSON is parsed in result()

    def _usage(self, usage: Any) -> bool:
        """Keep the last counts sent; ``True`` iff this carried output_tokens."""
        input_tokens, output_tokens = _int(usage, "input_tokens"), _int(usage, "output_tokens")
        if input_tokens is not None:
            self._input_tokens = input_tokens
        if output_tokens is not None:
            self._output_tokens = output_tokens
        return output_tokens is not None

    def _delta(self, payload: dict[str, Any]) -> bool:
        index, delta = payload.get("index"), payload.get("delta")
        block = self._blocks.get(index) if isinstance(index, int) else None
        if block is None or not isinstance(delta, dict):
            raise _stream_error("content_block_delta for a block that never started")
        kind = delta.get("type")
        if kind == "signature_delta":
            block.data["signature"] = _required_str(delta, "signature", kind)
            return False
        if kind == "text_delta":
            block.append("text", _required_str(delta, "text", kind))
        elif kind == "thinking_delta":
            block.append("thinking", _required_str(delta, "thinking", kind))
        elif kind == "input_json_delta":
            if block.json_parts is None:
                block.json_parts = []
            block.json_parts.append(_required_str(delta, "partial_json", kind))
        elif kind == "citations_delta":
            citations = block.data.get("citations")
            kept = citations if isinstance(citations, list) else []
            block.data["citations"] = [*kept, delta.get("citation")]
        else:
            block.data.update((k, v) for k, v in delta.items() if k != "type")
        self._deltas += 1
        if not self._usage_seen:
            self.output_tokens_seen = self._deltas
        return True

    def result(self) -> Completion:
        if not self.done:
            raise self._incomplete("no message_stop")
        blocks = [self._blocks[index].final() for index in sorted(self._blocks)]
        text = "".join(
            b["text"] for b in blocks if b.get("type") == "text" and isinstance(b.get("text"), str)
        )
        return Completion(
            text=text,
            stop_reason=self._stop_reason,
            stop_sequence=self._stop_sequence,
            content_json=json.dumps(blocks, ensure_ascii=False, separators=(",", ":")),
            input_tokens=self._input_tokens,
            output_tokens=self._output_tokens,
            response_id=self._id,
            response_model=self._model,
        )


def _required_str(delta: dict[str, Any], key: str, kind: str) -> str:
    value = delta.get(key)
    if not isinstance(value, str):
        raise _stream_error(f"{kind} without a string {key!r}")
    return value


class CompleteFold(_FoldBase):
    """Folds a legacy Text Completions stream into a Completion.

    The stream has no final event of its own: the ``completion`` event whose ``stop_reason`` is
    not null is the last one. A fragment is output only when it has text. No usage is sent, so
    ``output_tokens_seen`` counts fragments and the token columns stay ``None``.
    """

    _events = frozenset({"completion", "error"})

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[str] = []
        self._id: str | None = None
        self._model: str | None = None
        self._stop_reason: str | None = None
        self._stop_sequence: str | None = None

    def _handle(self, name: str, payload: dict[str, Any]) -> bool:
        fragment = payload.get("completion", "")
        if not isinstance(fragment, str):
            raise _stream_error("completion event whose 'completion' is not a string")
        self._model = _str(payload, "model") or self._model
        self._id = _str(payload, "id") or self._id
        stop_reason = _str(payload, "stop_reason")
        if stop_reason is not None:
            self._stop_reason = stop_reason
            self._stop_sequence = _str(payload, "stop")
            self.done = True
        if not fragment:
            return False
        self._parts.append(fragment)
        self.output_tokens_seen = len(self._parts)
        return True

    def result(self) -> Completion:
        if not self.done:
            raise self._incomplete("no completion event with a stop_reason")
        return Completion(
            text="".join(self._parts),
            stop_reason=self._stop_reason,
            stop_sequence=self._stop_sequence,
            response_id=self._id,
            response_model=self._model,
        )


# --- non-streaming answers (Message Batches results) ------------------------------------------


def message_completion(message: Any) -> Completion:
    """A non-streaming Messages response (a ``message`` object) as the Completion its stream
    would have folded into: the same text, ``content_json``, stop reason and usage.

    Raises ``RetryableError("invalid_response")`` when ``message`` lacks a content list.
    """
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        raise RetryableError("invalid_response", "the message has no list of content blocks")
    usage = message.get("usage")
    return Completion(
        text="".join(
            b["text"] for b in content if b.get("type") == "text" and isinstance(b.get("text"), str)
        ),
        stop_reason=_str(message, "stop_reason"),
        stop_sequence=_str(message, "stop_sequence"),
        content_json=json.dumps(content, ensure_ascii=False, separators=(",", ":")),
        input_tokens=_int(usage, "input_tokens"),
        output_tokens=_int(usage, "output_tokens"),
        response_id=_str(message, "id"),
        response_model=_str(message, "model"),
    )
