"""Simulator: prompt caching. Which part of a prompt is read from the cache, which is written.

A prompt is a sequence of segments in the API's order: tools, system blocks, message content
blocks. A breakpoint is a segment with ``cache_control`` or, with a top-level ``cache_control``
(automatic caching), the last segment. A request reads the longest cached prefix ending at a
segment up to 20 before any of its breakpoints (the API's lookback), and writes every
breakpoint beyond what it read; entries live ``ttl`` (5 minutes, or 1 hour) on the server's
clock, and a read refreshes them. Prefixes are keyed by the model and the content without its
``cache_control`` markers. Token counts use the same four-characters-a-token estimate as the
rest of the simulator, so read + written + uncached is the request's input tokens.
It must not validate requests or know about the wire.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from batchrun.sim.text import estimate_tokens

__all__ = ["CacheUse", "PromptCache", "block_chars", "segments"]

LOOKBACK = 20
TTL_S = {"5m": 300.0, "1h": 3600.0}


@dataclass(frozen=True, slots=True)
class Segment:
    """One cacheable unit: its characters, its content digest, and its breakpoint TTL if any."""

    chars: int
    digest: bytes
    ttl: str | None


@dataclass(frozen=True, slots=True)
class CacheUse:
    """What a request read from the cache and wrote to it, in input tokens."""

    read: int = 0
    write_5m: int = 0
    write_1h: int = 0

    @property
    def written(self) -> int:
        return self.write_5m + self.write_1h


def block_chars(block: Any) -> int:
    """A content block's size as the simulator counts it (text: its characters)."""
    if isinstance(block, dict) and block.get("type") == "text" and isinstance(block["text"], str):
        return len(block["text"])
    return len(str(block))


def _ttl(marker: Any) -> str | None:
    if not isinstance(marker, dict) or marker.get("type") != "ephemeral":
        return None
    return "1h" if marker.get("ttl") == "1h" else "5m"


def _segment(content: Any, chars: int) -> Segment:
    marker = content.get("cache_control") if isinstance(content, dict) else None
    bare = (
        {k: v for k, v in content.items() if k != "cache_control"}
        if isinstance(content, dict)
        else content
    )
    canonical = json.dumps(bare, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return Segment(chars, hashlib.sha256(canonical.encode()).digest(), _ttl(marker))


def segments(body: dict[str, Any]) -> list[Segment]:
    """The prompt of a valid Messages body as segments, with its breakpoints marked."""
    out = [_segment(tool, len(json.dumps(tool))) for tool in body.get("tools") or ()]
    system = body.get("system")
    if isinstance(system, str) and system:
        out.append(_segment(system, len(system)))
    elif isinstance(system, list):
        out += [_segment(block, block_chars(block)) for block in system]
    for message in body.get("messages") or ():
        content = message.get("content")
        if isinstance(content, str):
            out.append(_segment({"role": message["role"], "text": content}, len(content)))
        elif isinstance(content, list):
            out += [_segment(block, block_chars(block)) for block in content]
    automatic = _ttl(body.get("cache_control"))
    if automatic is not None and out and out[-1].ttl is None:
        last = out[-1]
        out[-1] = Segment(last.chars, last.digest, automatic)
    return out


class PromptCache:
    """The server's cache entries: prefix digest -> (expiry, ttl). One event loop owns it."""

    def __init__(self) -> None:
        self._entries: dict[bytes, tuple[float, str]] = {}

    def use(self, model: str, prompt: list[Segment], now: float) -> CacheUse:
        """Read the longest live cached prefix, write the breakpoints beyond it."""
        breakpoints = [i for i, seg in enumerate(prompt) if seg.ttl is not None]
        if not breakpoints:
            return CacheUse()
        digests, tokens = [], []
        running = hashlib.sha256(model.encode()).digest()
        chars = 0
        for seg in prompt:
            running = hashlib.sha256(running + seg.digest).digest()
            chars += seg.chars
            digests.append(running)
            tokens.append(estimate_tokens(chars))
        candidates = {i for b in breakpoints for i in range(max(0, b - LOOKBACK + 1), b + 1)}
        read_at = -1
        for i in sorted(candidates, reverse=True):
            entry = self._entries.get(digests[i])
            if entry is not None and entry[0] > now:
                read_at = i
                self._entries[digests[i]] = (now + TTL_S[entry[1]], entry[1])
                break
        read = tokens[read_at] if read_at >= 0 else 0
        written = {"5m": 0, "1h": 0}
        done = read
        for b in breakpoints:
            if b <= read_at:
                continue
            ttl = prompt[b].ttl or "5m"
            self._entries[digests[b]] = (now + TTL_S[ttl], ttl)
            written[ttl] += tokens[b] - done
            done = tokens[b]
        self._expire(now)
        return CacheUse(read=read, write_5m=written["5m"], write_1h=written["1h"])

    def _expire(self, now: float) -> None:
        """Drop dead entries now and then, so that a long run's memory stays bounded."""
        if len(self._entries) > 10_000:
            self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
