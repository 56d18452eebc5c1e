"""What a request will cost before it is sent: a cheap estimate of its input tokens.

Part of :mod:`batchrun.apis`, used by each API's estimate of its own body. About four
characters a token for ASCII text, one token for any other character (CJK text runs near one
token a character), 1,600 tokens for an image (the API's figure for a full-size one), a quarter
of the JSON for any other block, plus :data:`MESSAGE_OVERHEAD` tokens a message for roles and
separators. The rate budget corrects it by the count the server reports once the stream ends,
so its errors never accumulate. Pure code.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["IMAGE_TOKENS", "MESSAGE_OVERHEAD", "content_tokens", "json_tokens", "text_tokens"]

MESSAGE_OVERHEAD = 3
IMAGE_TOKENS = 1_600


def text_tokens(text: str) -> int:
    ascii_chars = sum(1 for ch in text if ch < "\x80")
    return math.ceil(ascii_chars / 4) + (len(text) - ascii_chars)


def json_tokens(value: Any) -> int:
    return math.ceil(len(json.dumps(value, ensure_ascii=False)) / 4)


def content_tokens(content: Any) -> int:
    """A message's content: a string, or a list of blocks."""
    if isinstance(content, str):
        return text_tokens(content)
    if not isinstance(content, list):
        return 0
    total = 0
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            total += text_tokens(block["text"])
        elif block.get("type") == "image":
            total += IMAGE_TOKENS
        else:
            total += json_tokens(block)
    return total
