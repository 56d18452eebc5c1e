"""The Messages API's stream fold: ``message_start`` ... ``message_stop`` into a Completion.

Part of :mod:`batchrun.apis` (see :mod:`batchrun.apis.fold` for what every fold shares). Pure
code: no I/O, no retries, no clocks.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec

from batchrun.apis.fold import Classify, FoldBase, payload_int, payload_str, stream_error
from batchrun.apis.sse import ServerSentEvent
from batchrun.models import Completion

__all__ = ["MessagesFold", "blocks_text", "usage_fields"]


class _TextDelta(msgspec.Struct, gc=False):
    type: Literal["text_delta"]
    text: str


class _DeltaEvent(msgspec.Struct, gc=False):
    """A text delta, the shape of nearly every event of a stream: decoded straight into this,
    no dicts; any other shape fails to decode."""

    index: int
    delta: _TextDelta


_delta_decoder = msgspec.json.Decoder(_DeltaEvent)


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


class MessagesFold(FoldBase):
    """Folds a Messages stream (``message_start`` ... ``message_stop``) into a Completion.

    Every ``content_block_delta`` is model output except ``signature_delta``, which is a
    verification token the server attaches to a thinking block, not something the model wrote;
    delta types unknown to this code count as output, since new ones have so far always been.
    Unknown delta types merge their fields (all but ``type``) into the block, replacing what the
    block had: ``compaction_delta`` fills in the compaction block's ``content`` and
    ``encrypted_content`` this way. Usage counts are cumulative: the last value wins.

    ``usage_json`` is ``message_start``'s ``message.usage`` with each ``message_delta``'s
    ``usage`` laid over it, key by key at the top level: a key the delta sends replaces the
    start's (its counts are cumulative and supersede, markedly so on server-tool turns); a key
    only the start sent (``service_tier``, ``cache_creation`` in today's streams) is kept. That is
    the usage object a non-streaming response holds for the same message.
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

    def __init__(self, classify: Classify) -> None:
        super().__init__(classify)
        self._blocks: dict[int, _Block] = {}
        self._deltas = 0
        self._usage_seen = False  # message_start's output_tokens is a placeholder; this is not
        self._started = False
        self._id: str | None = None
        self._model: str | None = None
        self._input_tokens: int | None = None
        self._output_tokens: int | None = None
        self._stop_reason: str | None = None
        self._stop_sequence: str | None = None
        self._usage_sent: dict[str, Any] | None = None  # merged as the class docstring says

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
        self.text_started = True
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
                raise stream_error("content_block_start without an index and a content_block")
            self._blocks[index] = _Block(block)
        elif name == "message_start":
            if self._started:
                # Two messages spliced into one completion would be a row nobody asked for.
                raise stream_error("a second message_start in one stream")
            self._started = True
            message = payload.get("message")
            if not isinstance(message, dict):
                raise stream_error("message_start without a message object")
            self._id, self._model = payload_str(message, "id"), payload_str(message, "model")
            self._usage(message.get("usage"))
        elif name == "message_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict):
                if "stop_reason" in delta:
                    self._stop_reason = payload_str(delta, "stop_reason")
                if "stop_sequence" in delta:
                    self._stop_sequence = payload_str(delta, "stop_sequence")
            if self._usage(payload.get("usage")):
                self._usage_seen = True
                self.output_tokens_seen = self._output_tokens
        elif name == "message_stop":
            self.done = True
        return False  # content_block_stop needs nothing: input JSON is parsed in result()

    def _usage(self, usage: Any) -> bool:
        """Keep the last counts sent; ``True`` iff this carried output_tokens."""
        if isinstance(usage, dict):
            self._usage_sent = {**(self._usage_sent or {}), **usage}
        input_tokens, output_tokens = (
            payload_int(usage, "input_tokens"),
            payload_int(usage, "output_tokens"),
        )
        if input_tokens is not None:
            self._input_tokens = input_tokens
        if output_tokens is not None:
            self._output_tokens = output_tokens
        return output_tokens is not None

    def _delta(self, payload: dict[str, Any]) -> bool:
        index, delta = payload.get("index"), payload.get("delta")
        block = self._blocks.get(index) if isinstance(index, int) else None
        if block is None or not isinstance(delta, dict):
            raise stream_error("content_block_delta for a block that never started")
        kind = delta.get("type")
        if kind == "signature_delta":
            # One delta in today's streams; fragments, should they come, join in order.
            before = block.data.get("signature")
            signature = _required_str(delta, "signature", kind)
            block.data["signature"] = (before if isinstance(before, str) else "") + signature
            return False
        if kind == "text_delta":
            block.append("text", _required_str(delta, "text", kind))
            self.text_started = True
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
        usage = usage_fields(self._usage_sent)
        # The counts as the stream sent them, also where a usage was not an object.
        usage.update(input_tokens=self._input_tokens, output_tokens=self._output_tokens)
        return Completion(
            text=blocks_text(blocks),
            stop_reason=self._stop_reason,
            stop_sequence=self._stop_sequence,
            content_json=json.dumps(blocks, ensure_ascii=False, separators=(",", ":")),
            response_id=self._id,
            response_model=self._model,
            **usage,
        )


def _required_str(delta: dict[str, Any], key: str, kind: str) -> str:
    value = delta.get(key)
    if not isinstance(value, str):
        raise stream_error(f"{kind} without a string {key!r}")
    return value


def usage_fields(usage: Any) -> dict[str, Any]:
    """A usage object as :class:`~batchrun.models.Completion`'s usage fields: the token counts,
    the cache counts (``cache_creation`` split by TTL), ``service_tier``, the reasoning part of
    the output (``output_tokens_details.thinking_tokens``, or ``reasoning_tokens``, when sent)
    and the object itself as JSON. Fields the usage lacks are ``None``."""
    if not isinstance(usage, dict):
        return {}
    split = usage.get("cache_creation")
    details = usage.get("output_tokens_details")
    reasoning = payload_int(details, "thinking_tokens")
    return {
        "input_tokens": payload_int(usage, "input_tokens"),
        "output_tokens": payload_int(usage, "output_tokens"),
        "cache_read_input_tokens": payload_int(usage, "cache_read_input_tokens"),
        "cache_creation_input_tokens": payload_int(usage, "cache_creation_input_tokens"),
        "cache_creation_5m_input_tokens": payload_int(split, "ephemeral_5m_input_tokens"),
        "cache_creation_1h_input_tokens": payload_int(split, "ephemeral_1h_input_tokens"),
        "reasoning_output_tokens": reasoning
        if reasoning is not None
        else payload_int(details, "reasoning_tokens"),
        "service_tier": payload_str(usage, "service_tier"),
        "usage_json": json.dumps(usage, ensure_ascii=False, separators=(",", ":")),
    }


def blocks_text(blocks: list[dict[str, Any]]) -> str:
    """What the model wrote as text: every text block's text, in order."""
    return "".join(
        b["text"] for b in blocks if b.get("type") == "text" and isinstance(b.get("text"), str)
    )
