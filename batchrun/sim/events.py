"""Simulator: a reply as the wire would carry it. SSE events pre-encoded as bytes, or JSON bodies.

Pure: a checked request and a reply in, bytes and dicts out. Events are encoded once, up front,
so that the stream writer only joins and writes. Framing is exactly
``event: X\\ndata: {json}\\n\\n`` with compact JSON, as in the captured fixtures.
It must not sleep, write or pick faults.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any

from batchrun.sim.responses import error_body
from batchrun.sim.text import Reply
from batchrun.sim.turn import Block, Turn
from batchrun.sim.validate import GenRequest

__all__ = ["Script", "complete_json", "complete_script", "message_json", "messages_script", "sse"]

PING = b'event: ping\ndata: {"type": "ping"}\n\n'
HUMAN_STOP = "\n\nHuman:"


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One server-sent event with a JSON payload."""
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"event: {event}\ndata: {payload}\n\n".encode()


@dataclass(frozen=True, slots=True)
class Script:
    """A stream in three parts: before the content, one event per token, and the end.

    ``error`` is the in-stream overload error in this API's shape; ``malformed`` an event whose
    data is not JSON.
    """

    head: tuple[bytes, ...]
    deltas: tuple[bytes, ...]
    tail: tuple[bytes, ...]
    error: bytes
    malformed: bytes


@functools.lru_cache(maxsize=8192)
def _text_delta(text: str, index: int) -> bytes:
    """``sse("content_block_delta", ...)`` of one text delta. Tokens repeat (the model's words
    are few), so each is encoded once: the simulator must not be what limits a benchmark."""
    return sse(
        "content_block_delta",
        {
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "text_delta", "text": text},
        },
    )


def message_json(req: GenRequest, turn: Turn, message_id: str) -> dict[str, Any]:
    """The non-streaming Messages answer."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": [block.final() for block in turn.blocks],
        "stop_reason": turn.stop_reason,
        "stop_sequence": turn.stop_sequence,
        "usage": turn.usage,
    }


def _block_events(index: int, block: Block) -> list[tuple[bytes, bool]]:
    """A block's events, each marked True when it is a delta (a timed step of the stream)."""
    start = {"type": "content_block_start", "index": index, "content_block": block.start()}
    out = [(sse("content_block_start", start), False)]
    if block.type == "text":
        out += [(_text_delta(piece, index), True) for piece in block.pieces]
    else:
        out += [
            (
                sse(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": d},
                ),
                True,
            )
            for d in block.deltas()
        ]
    out.append((sse("content_block_stop", {"type": "content_block_stop", "index": index}), False))
    return out


def messages_script(req: GenRequest, turn: Turn, message_id: str) -> Script:
    """The Messages stream: message_start, each block (start, deltas, stop), message_delta with
    the final usage, message_stop. Events between two deltas (a block's stop, the next one's
    start) go out with the delta after them."""
    start = message_json(req, turn, message_id)
    start.update(
        content=[], stop_reason=None, stop_sequence=None, usage={**turn.usage, "output_tokens": 1}
    )
    events = [(sse("message_start", {"type": "message_start", "message": start}), False)]
    blocks = turn.blocks or (Block("text"),)
    for index, block in enumerate(blocks):
        events += _block_events(index, block)
        if index == 0:
            events.insert(2, (PING, False))
    head: list[bytes] = []
    deltas: list[bytes] = []
    pending: list[bytes] = []
    for data, is_delta in events:
        if is_delta:
            deltas.append(b"".join([*pending, data]))
            pending = []
        else:
            (pending if deltas else head).append(data)
    final = {
        "type": "message_delta",
        "delta": {"stop_reason": turn.stop_reason, "stop_sequence": turn.stop_sequence},
        "usage": turn.usage,
    }
    tail = (*pending, sse("message_delta", final), sse("message_stop", {"type": "message_stop"}))
    error = sse("error", error_body("overloaded_error", "Overloaded"))
    malformed = b"event: content_block_delta\ndata: {not json\n\n"
    return Script(tuple(head), tuple(deltas), tail, error, malformed)


def _stop(reply: Reply) -> str:
    return reply.stop_sequence if reply.stop_sequence is not None else HUMAN_STOP


def complete_json(req: GenRequest, reply: Reply, completion_id: str) -> dict[str, Any]:
    """The non-streaming legacy Complete answer."""
    stop = _stop(reply) if reply.stop_reason == "stop_sequence" else None
    return {
        "type": "completion",
        "id": completion_id,
        "completion": reply.text,
        "stop_reason": reply.stop_reason,
        "stop": stop,
        "model": req.model,
    }


@functools.lru_cache(maxsize=8192)
def _completion_delta(text: str, model: str) -> bytes:
    """One legacy ``completion`` event with text and no stop reason, encoded once per token."""
    data = {"type": "completion", "completion": text, "stop_reason": None, "model": model}
    return sse("completion", data)


def complete_script(req: GenRequest, reply: Reply) -> Script:
    """The legacy stream: one ``completion`` event per token, then an empty one with the reason."""

    deltas = tuple(_completion_delta(t, req.model) for t in reply.tokens)
    last = {
        "type": "completion",
        "completion": "",
        "stop_reason": reply.stop_reason,
        "model": req.model,
    }
    if reply.stop_reason == "stop_sequence":
        last["stop"] = _stop(reply)
    # The legacy docs show the in-stream error without the outer "type".
    error = sse("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}})
    malformed = b"event: completion\ndata: {not json\n\n"
    return Script((), deltas, (sse("completion", last),), error, malformed)
