"""Simulator: a Messages reply as the API composes it today. Content blocks, stop reason, usage.

From a checked request: a ``thinking`` block (deltas, then a signature) when thinking is on,
optionally a ``redacted_thinking`` block; a web search (``server_tool_use`` and
``web_search_tool_result`` blocks, made-up results) when a web_search tool is declared and drawn;
then the answer, either text from ``text.generate``,
JSON of the ``output_config.format`` schema's shape (``schema.instance``), or a ``tool_use``
block whose input has the tool's ``input_schema`` shape (after a short text when the model
chose the tool itself). ``output_config.effort`` scales thinking and text; ``max_tokens`` cuts
everything in order. Usage splits the input into uncached, cache-read and cache-written parts
(``cache``). Every draw is seeded by (seed, content, sighting): deterministic.
It must not know about HTTP or SSE, nor keep state (the cache is handed in).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from batchrun.sim.cache import CacheUse
from batchrun.sim.config import SimConfig
from batchrun.sim.schema import instance
from batchrun.sim.text import generate, offered_answers, random_for, words
from batchrun.sim.validate import GenRequest

__all__ = ["EFFORT_SCALE", "Block", "Turn", "model_turn"]

EFFORT_SCALE = {"low": 0.4, "medium": 0.7, "high": 1.0, "xhigh": 1.3, "max": 1.6}
_CHUNK = 12  # characters of JSON per input_json_delta / text_delta


@dataclass(frozen=True, slots=True)
class Block:
    """One content block: its type, the pieces its deltas carry, and its other fields."""

    type: str  # thinking | redacted_thinking | text | tool_use | server_tool_use | *_tool_result
    pieces: tuple[str, ...] = ()
    signature: str = ""
    data: str = ""
    tool_id: str = ""
    tool_name: str = ""
    result_json: str = ""  # a server tool result's content, as JSON

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def start(self) -> dict[str, Any]:
        """The block as ``content_block_start`` announces it (before any delta)."""
        if self.type == "thinking":
            return {"type": "thinking", "thinking": "", "signature": ""}
        if self.type == "redacted_thinking":
            return {"type": "redacted_thinking", "data": self.data}
        if self.type in ("tool_use", "server_tool_use"):
            return {"type": self.type, "id": self.tool_id, "name": self.tool_name, "input": {}}
        if self.type.endswith("_tool_result"):
            content = json.loads(self.result_json)
            return {"type": self.type, "tool_use_id": self.tool_id, "content": content}
        return {"type": "text", "text": ""}

    def final(self) -> dict[str, Any]:
        """The whole block, as a non-streamed message holds it."""
        if self.type == "thinking":
            return {"type": "thinking", "thinking": self.text, "signature": self.signature}
        if self.type in ("tool_use", "server_tool_use"):
            try:
                tool_input = json.loads(self.text)
            except ValueError:  # cut by max_tokens
                tool_input = {}
            return {**self.start(), "input": tool_input}
        if self.type == "text":
            return {"type": "text", "text": self.text}
        return self.start()

    def deltas(self) -> list[dict[str, Any]]:
        """The ``delta`` objects of its ``content_block_delta`` events, in order."""
        if self.type == "thinking":
            out = [{"type": "thinking_delta", "thinking": p} for p in self.pieces]
            return [*out, {"type": "signature_delta", "signature": self.signature}]
        if self.type in ("tool_use", "server_tool_use"):
            return [{"type": "input_json_delta", "partial_json": p} for p in self.pieces]
        if self.type == "text":
            return [{"type": "text_delta", "text": p} for p in self.pieces]
        return []


@dataclass(frozen=True, slots=True)
class Turn:
    """The reply: blocks in order, why it stopped, and the usage object as the API sends it."""

    blocks: tuple[Block, ...]
    stop_reason: str
    stop_sequence: str | None
    usage: dict[str, Any]

    @property
    def output_tokens(self) -> int:
        return int(self.usage["output_tokens"])


def _chunks(text: str) -> tuple[str, ...]:
    return tuple(text[i : i + _CHUNK] for i in range(0, len(text), _CHUNK))


def _tokens(pieces: tuple[str, ...]) -> int:
    return sum(math.ceil(len(p) / 4) for p in pieces)


def _signature(*parts: bytes) -> str:
    digest = hashlib.sha256(b"\0".join(parts)).digest()
    return base64.b64encode(b"\x12" + digest * 3).decode()


def _thinking_on(req: GenRequest) -> bool:
    kind = (req.body.get("thinking") or {}).get("type")
    if kind == "disabled":
        return False
    return kind in ("adaptive", "enabled") or req.spec.thinking == "adaptive_always"


def _thinking(
    config: SimConfig, req: GenRequest, draw: int, scale: float, cap: int
) -> tuple[Block, int]:
    """The thinking block and the tokens it costs (also when its text is omitted)."""
    rng = random_for(config.seed, req.key, draw, b"thinking")
    low = config.min_thinking_tokens
    count = max(1, round(rng.randint(low, max(low, config.max_thinking_tokens)) * scale))
    thinking = req.body.get("thinking") or {}
    if isinstance(thinking.get("budget_tokens"), int):
        count = min(count, thinking["budget_tokens"])
    stream = words(rng)
    count = min(count, cap)
    pieces = [next(stream) for _ in range(count)]
    pieces[0] = pieces[0].lstrip()
    if thinking.get("display") == "omitted":
        pieces = []
    signature = _signature(b"%d" % config.seed, req.key, b"%d" % draw)
    return Block("thinking", tuple(pieces), signature=signature), count


def _pick_tool(config: SimConfig, req: GenRequest, draw: int) -> tuple[dict[str, Any], bool] | None:
    """The custom tool the reply calls and whether ``tool_choice`` forced it, or ``None``."""
    tools = [t for t in req.body.get("tools") or () if t.get("type", "custom") == "custom"]
    choice = req.body.get("tool_choice") or {"type": "auto"}
    if not tools or choice.get("type") == "none":
        return None
    rng = random_for(config.seed, req.key, draw, b"tools")
    if choice.get("type") == "tool":
        return next(t for t in tools if t["name"] == choice.get("name")), True
    if choice.get("type") == "any":
        return rng.choice(tools), True
    if rng.random() < config.tool_use_rate:
        return rng.choice(tools), False
    return None


def _search(config: SimConfig, req: GenRequest, draw: int) -> tuple[Block, Block] | None:
    """A web search the reply makes first, when a web_search server tool is declared and
    ``tool_choice`` is auto: by the same draw rate as custom tools. Nothing is searched; the
    results are made up (example.com), as the blocks' shapes are what a client reads."""
    tools = [
        t for t in req.body.get("tools") or () if str(t.get("type", "")).startswith("web_search")
    ]
    choice = req.body.get("tool_choice") or {"type": "auto"}
    if not tools or choice.get("type") != "auto":
        return None
    rng = random_for(config.seed, req.key, draw, b"search")
    if rng.random() >= config.tool_use_rate:
        return None
    stream = words(rng)
    query = "".join(next(stream) for _ in range(4)).strip(" ,.!?")
    tool_id = "srvtoolu_01" + _alnum(
        _signature(b"search", b"%d" % config.seed, req.key, b"%d" % draw)
    )
    results = []
    for i in range(2):
        title = "".join(next(stream) for _ in range(5)).strip(" ,.!?")
        slug = "-".join(w.lower() for w in title.split() if w.isalpha())
        results.append(
            {
                "type": "web_search_result",
                "title": title,
                "url": f"https://www.example.com/{slug}",
                "encrypted_content": _signature(b"page", tool_id.encode(), b"%d" % i),
                "page_age": f"{i + 1} weeks ago",
            }
        )
    use = Block(
        "server_tool_use",
        _chunks(json.dumps({"query": query})),
        tool_id=tool_id,
        tool_name=tools[0].get("name", "web_search"),
    )
    found = Block("web_search_tool_result", tool_id=tool_id, result_json=json.dumps(results))
    return use, found


def _alnum(text: str) -> str:
    return "".join(c for c in text if c.isalnum())[:22]


def _usage(
    req: GenRequest,
    use: CacheUse,
    output_tokens: int,
    thinking_tokens: int | None,
    tier: str,
    searches: int = 0,
) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "input_tokens": req.input_tokens - use.read - use.written,
        "cache_creation_input_tokens": use.written,
        "cache_read_input_tokens": use.read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": use.write_5m,
            "ephemeral_1h_input_tokens": use.write_1h,
        },
        "output_tokens": output_tokens,
        "service_tier": tier,
    }
    if thinking_tokens is not None:
        usage["output_tokens_details"] = {"thinking_tokens": thinking_tokens}
    if any(t.get("type", "custom") != "custom" for t in req.body.get("tools") or ()):
        usage["server_tool_use"] = {"web_search_requests": searches, "web_fetch_requests": 0}
    return usage


def model_turn(
    config: SimConfig,
    req: GenRequest,
    *,
    draw: int = 1,
    cache: CacheUse | None = None,
    tier: str = "standard",
) -> Turn:
    """The reply to ``req`` on its ``draw``-th sighting, with ``cache`` what its prompt read and
    wrote, served on ``tier`` (``standard``, or ``batch`` in a Message Batch)."""
    output_config = req.body.get("output_config") or {}
    scale = EFFORT_SCALE.get(output_config.get("effort", "high"), 1.0)
    left = req.max_tokens
    blocks: list[Block] = []
    cost: int | None = None
    if _thinking_on(req):
        block, cost = _thinking(config, req, draw, scale, left)
        blocks.append(block)
        left -= cost
        if config.redacted_thinking:
            data = _signature(b"redacted", b"%d" % config.seed, req.key, b"%d" % draw)
            blocks.append(Block("redacted_thinking", data=data))
    stop_reason, stop_sequence = "end_turn", None
    search = _search(config, req, draw) if left > 0 else None
    if search is not None:
        blocks += search
        left -= _tokens(search[0].pieces)
    picked = _pick_tool(config, req, draw)
    form = output_config.get("format")
    if left <= 0:
        stop_reason = "max_tokens"
    elif picked is None or not picked[1]:
        if form is not None:
            rng = random_for(config.seed, req.key, draw, b"schema")
            pieces = _chunks(json.dumps(instance(form["schema"], rng), ensure_ascii=False))
            if _tokens(pieces) > left:
                pieces, stop_reason = _cut(pieces, left), "max_tokens"
        else:
            reply = generate(
                config.seed,
                req.key,
                min_tokens=config.min_output_tokens,
                max_tokens=config.max_output_tokens,
                cap=left,
                stop_sequences=req.stop_sequences,
                draw=draw,
                scale=scale,
                answers=offered_answers(_last_user_text(req.body)),
            )
            pieces, stop_reason, stop_sequence = (
                reply.tokens,
                reply.stop_reason,
                reply.stop_sequence,
            )
            if picked is not None and stop_reason == "end_turn":
                pieces = _first_sentence(pieces)
        blocks.append(Block("text", tuple(pieces)))
        left -= _tokens(tuple(pieces)) if form is not None else len(pieces)
    if picked is not None and stop_reason == "end_turn" and left > 0:
        rng = random_for(config.seed, req.key, draw, b"input")
        pieces = _chunks(json.dumps(instance(picked[0]["input_schema"], rng), ensure_ascii=False))
        stop_reason = "tool_use"
        if _tokens(pieces) > left:
            pieces, stop_reason = _cut(pieces, left), "max_tokens"
        tool_id = _signature(b"tool", b"%d" % config.seed, req.key, b"%d" % draw)
        tool_id = "toolu_01" + _alnum(tool_id)
        blocks.append(Block("tool_use", pieces, tool_id=tool_id, tool_name=picked[0]["name"]))
        left -= _tokens(pieces)
    output = req.max_tokens - left
    usage = _usage(req, cache or CacheUse(), output, cost, tier, 0 if search is None else 1)
    return Turn(tuple(blocks), stop_reason, stop_sequence, usage)


def _last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user turn (its text blocks joined), where a prompt offers answers."""
    messages = [m for m in body.get("messages") or () if m.get("role") == "user"]
    content = messages[-1].get("content") if messages else None
    if isinstance(content, list):
        return "\n".join(b.get("text", "") for b in content if b.get("type") == "text")
    return content if isinstance(content, str) else ""


def _cut(pieces: tuple[str, ...], tokens: int) -> tuple[str, ...]:
    out: list[str] = []
    for piece in pieces:
        if _tokens((*out, piece)) > tokens:
            break
        out.append(piece)
    return tuple(out)


def _first_sentence(tokens: tuple[str, ...]) -> tuple[str, ...]:
    """The text before a tool call: up to the first sentence end."""
    for i, token in enumerate(tokens):
        if token in (".", "!", "?"):
            return tokens[: i + 1]
    return tokens
