"""The two Anthropic APIs batchrun speaks, request side: bodies, paths, the legacy prompt.

Part of stage 3 (call): :func:`build_body` turns a :class:`~batchrun.records.RequestItem` into
the JSON body of ``POST /v1/messages`` or the legacy ``POST /v1/complete``; the answers are
folded by :mod:`batchrun.folds`. Pure code: no I/O, no retries, no clocks.

:func:`validate_complete_prompt` is the one definition of the legacy prompt rule; the simulator
uses it to answer 400 the way the API does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, assert_never

from batchrun.models import RequestItem

__all__ = [
    "ASSISTANT",
    "HUMAN",
    "Api",
    "build_body",
    "complete_prompt",
    "request_path",
    "validate_complete_prompt",
]

Api = Literal["messages", "complete"]

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"


def request_path(api: Api) -> str:
    """The endpoint path of ``api``."""
    if api == "messages":
        return "/v1/messages"
    if api == "complete":
        return "/v1/complete"
    assert_never(api)


def build_body(
    api: Api,
    item: RequestItem,
    *,
    model: str,
    max_tokens: int,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    stop_sequences: Sequence[str] = (),
) -> dict[str, Any]:
    """The streaming request body for ``item``; parameters left as ``None`` are not sent."""
    body: dict[str, Any] = {"model": model}
    if api == "messages":
        body["max_tokens"] = max_tokens
        body["messages"] = list(item.messages)
        if item.system:
            body["system"] = item.system
    elif api == "complete":
        body["prompt"] = complete_prompt(item)
        body["max_tokens_to_sample"] = max_tokens
    else:
        assert_never(api)
    if stop_sequences:
        body["stop_sequences"] = list(stop_sequences)
    for key, value in (("temperature", temperature), ("top_p", top_p), ("top_k", top_k)):
        if value is not None:
            body[key] = value
    body["stream"] = True
    return body


def complete_prompt(item: RequestItem) -> str:
    """The legacy prompt for ``item``, as CONTRACT.md describes.

    One user message is the prompt: used as is when it already starts with ``\\n\\nHuman:``,
    else wrapped in one Human turn and an open Assistant turn. Several messages become
    alternating turns ending with an open Assistant turn, or with the last assistant message as
    a prefill. The system prompt goes before the first Human turn. Of content given as blocks
    only the text blocks count, joined with nothing between them (as the model reads them).
    Raises ``ValueError`` for a role other than user or assistant.
    """
    system = item.system or ""
    messages = item.messages
    if len(messages) == 1 and messages[0].get("role") == "user":
        text = _text_of(messages[0].get("content"))
        if text.startswith(HUMAN):
            return system + text
        return f"{system}{HUMAN} {text}{ASSISTANT}"
    turns = [system]
    for message in messages:
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise ValueError(f"message role must be 'user' or 'assistant', not {role!r}")
        text = _text_of(message.get("content"))
        turns.append((HUMAN if role == "user" else ASSISTANT) + (f" {text}" if text else ""))
    if not messages or messages[-1].get("role") != "assistant":
        turns.append(ASSISTANT)
    return "".join(turns)


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            block["text"]
            for block in content
            if isinstance(block, dict)
            and block.get("type") == "text"
            and isinstance(block.get("text"), str)
        )
    return "" if content is None else str(content)


def validate_complete_prompt(prompt: str) -> str | None:
    """What is wrong with a legacy ``prompt``, in words, or ``None`` when the API accepts it.

    The rule: an optional system text, then a ``\\n\\nHuman:`` turn, and a ``\\n\\nAssistant:``
    turn last (an open one, or a prefill with text after it).
    """
    first_human = prompt.find(HUMAN)
    if first_human < 0:
        return r'prompt must contain a "\n\nHuman:" turn'
    first_assistant = prompt.find(ASSISTANT)
    if first_assistant < 0:
        return r'prompt must end with a "\n\nAssistant:" turn'
    if first_assistant < first_human:
        return r'prompt must have its first "\n\nHuman:" turn before any "\n\nAssistant:" turn'
    if prompt.rfind(HUMAN) > prompt.rfind(ASSISTANT):
        return r'prompt must end with a "\n\nAssistant:" turn, not a "\n\nHuman:" turn'
    return None
