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
def _text_delta(text: str) -> bytes:
    """``sse("content_block_delta", ...)`` of one text delta. Tokens repeat (the model's words
    are few), so each is encoded once: the simulator must not be what limits a benchmark."""
    return sse(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}},
    )


def _usage(req: GenRequest, output_tokens: int) -> dict[str, int]:
    return {
        "input_tokens": req.input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": output_tokens,
    }


def message_json(req: GenRequest, reply: Reply, message_id: str) -> dict[str, Any]:
    """The non-streaming Messages answer."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": [{"type": "text", "text": reply.text}],
        "stop_reason": reply.stop_reason,
        "stop_sequence": reply.stop_sequence,
        "usage": _usage(req, len(reply.tokens)),
    }


def messages_script(req: GenRequest, reply: Reply, message_id: str) -> Script:
    """The Messages stream: message_start, one text block, message_delta, message_stop."""
    start = message_json(req, reply, message_id)
    start.update(content=[], stop_reason=None, stop_sequence=None, usage=_usage(req, 1))
    head = (
        sse("message_start", {"type": "message_start", "message": start}),
        sse(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        PING,
    )
    deltas = tuple(_text_delta(t) for t in reply.tokens)
    tail = (
        sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence},
                "usage": {"output_tokens": len(reply.tokens)},
            },
        ),
        sse("message_stop", {"type": "message_stop"}),
    )
    error = sse("error", error_body("overloaded_error", "Overloaded"))
    malformed = b"event: content_block_delta\ndata: {not json\n\n"
    return Script(head, deltas, tail, error, malformed)


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
