"""One ``messages_column`` cell: a conversation checked and made ready for the Messages API.

Part of stage 1 (load). A cell is JSON text or a list of ``{role, content}`` structs; it becomes
a tuple of turns or a ``ValueError`` whose words follow "input.messages_column 'm': ".

The rules are stricter than today's API, on purpose: the first turn is ``user`` and roles
alternate (the API now merges consecutive same-role turns, but the legacy Complete API cannot,
and two user turns in a row in a prompt set is almost always a data bug); content is never
empty or blank; a last ``assistant`` turn is a prefill and must not end in whitespace (the API
refuses that). Pure: no I/O, no polars.
"""

from __future__ import annotations

import json
from typing import Any, Literal

__all__ = ["CellKind", "parse_messages"]

CellKind = Literal["json", "list"]


def _drop_nulls(value: Any) -> Any:
    """A Parquet struct has every field in every row; the API wants absent fields absent."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def parse_messages(
    cell: Any, *, kind: CellKind | None, text_only: bool
) -> tuple[dict[str, Any], ...]:
    """One cell as Messages API turns; ``ValueError`` says what is wrong and how to fix it."""
    if cell is None:
        raise ValueError("the cell is null; every row needs a conversation")
    if kind == "json":
        try:
            cell = json.loads(cell)
        except (json.JSONDecodeError, RecursionError) as exc:
            where = f": {exc.msg} at character {exc.pos}" if isinstance(exc, ValueError) else ""
            raise ValueError(f"the cell is not valid JSON{where}") from None
    else:
        cell = _drop_nulls(cell)
    if not isinstance(cell, list) or not cell:
        raise ValueError(
            'the cell must be a non-empty list of {role, content} messages, e.g. [{"role": '
            '"user", "content": "Hi"}]'
        )
    turns: list[dict[str, Any]] = []
    for n, msg in enumerate(cell, 1):
        if not isinstance(msg, dict) or set(msg) != {"role", "content"}:
            raise ValueError(f"message {n} must be an object with exactly role and content")
        role, body = msg["role"], msg["content"]
        if role not in ("user", "assistant"):
            raise ValueError(
                f"message {n} has role {_short(role)}; roles are user and assistant "
                "(put a system prompt in input.system)"
            )
        if n == 1 and role != "user":
            raise ValueError("the conversation must start with a user message, not assistant")
        if turns and turns[-1]["role"] == role:
            raise ValueError(
                f"messages {n - 1} and {n} are both {role}: roles must alternate user, "
                "assistant, user, ...; merge the two into one message"
            )
        if text_only and not isinstance(body, str):
            raise ValueError(f"message {n}: api complete takes text content only")
        if not (isinstance(body, str) and body.strip()) and not _blocks_ok(body):
            raise ValueError(f"message {n} has empty content (text or a list of blocks)")
        turns.append({"role": role, "content": body})
    if turns[-1]["role"] == "assistant" and _ends_in_space(turns[-1]["content"]):
        raise ValueError(
            f"message {len(turns)} (the assistant prefill) ends in whitespace, which the API "
            "refuses; remove the trailing whitespace"
        )
    return tuple(turns)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _blocks_ok(body: Any) -> bool:
    if not isinstance(body, list) or not body:
        return False
    for block in body:
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            return False
        if block["type"] == "text" and not (
            isinstance(block.get("text"), str) and block["text"].strip()
        ):
            return False
    return True


def _ends_in_space(body: Any) -> bool:
    if isinstance(body, str):
        return body != body.rstrip()
    last = body[-1] if isinstance(body, list) and body else None
    if isinstance(last, dict) and last.get("type") == "text" and isinstance(last["text"], str):
        return bool(last["text"]) and last["text"] != last["text"].rstrip()
    return False
