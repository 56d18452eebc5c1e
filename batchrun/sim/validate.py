"""Simulator: request validation, as the API does it. A JSON body in, a checked request out.

Pure: no HTTP objects, no clock. Error messages imitate the API's pydantic style
(``messages: Field required``, ``max_tokens: Input should be a valid integer``) so that clients
are tested against what the real service says. It must not generate text or pick faults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from batchrun.sim.text import content_key, estimate_tokens

__all__ = ["Api", "GenRequest", "Rejected", "validate"]

Api = Literal["messages", "complete", "count_tokens"]

_MESSAGES_FIELDS = frozenset(
    "model messages max_tokens system stop_sequences temperature top_p top_k metadata stream "  # noqa: SIM905
    "tools tool_choice thinking service_tier container mcp_servers context_management".split()
)
_COMPLETE_FIELDS = frozenset(
    "model prompt max_tokens_to_sample stop_sequences temperature top_p top_k metadata "  # noqa: SIM905
    "stream".split()
)
_TYPE_NAMES = {
    int: "a valid integer",
    str: "a valid string",
    list: "a valid list",
    dict: "a valid dictionary",
    bool: "a valid boolean",
    float: "a valid number",
}


class Rejected(Exception):
    """The API answers with an error: HTTP ``status``, error ``error_type`` and ``message``."""

    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


@dataclass(frozen=True, slots=True)
class GenRequest:
    """A valid request: what the model and the stream writer need to know."""

    api: Api
    model: str
    max_tokens: int
    stop_sequences: tuple[str, ...]
    stream: bool
    input_tokens: int
    key: bytes  # text.content_key of the body


def _invalid(message: str) -> Rejected:
    return Rejected(400, "invalid_request_error", message)


def _check(value: Any, kind: type, where: str) -> None:
    """Reject ``value`` unless it is a ``kind`` (bools are not numbers; ints are)."""
    ok = isinstance(value, kind) and not (kind in (int, float) and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise _invalid(f"{where}: Input should be {_TYPE_NAMES[kind]}")


def _required(body: dict[str, Any], name: str, kind: type) -> Any:
    if name not in body:
        raise _invalid(f"{name}: Field required")
    _check(body[name], kind, name)
    return body[name]


def _range(body: dict[str, Any], name: str, kind: type, low: float, high: float | None) -> None:
    if name not in body:
        return
    value = body[name]
    _check(value, kind, name)
    if value < low:
        raise _invalid(f"{name}: Input should be greater than or equal to {low:g}")
    if high is not None and value > high:
        raise _invalid(f"{name}: Input should be less than or equal to {high:g}")


def validate(api: Api, body: Any, *, max_tokens_limit: int) -> GenRequest:
    """Check ``body`` for ``api`` as the API would; raise :class:`Rejected` on the first fault."""
    if not isinstance(body, dict):
        raise _invalid("body: Input should be a valid dictionary")
    allowed = _COMPLETE_FIELDS if api == "complete" else _MESSAGES_FIELDS
    for name in body:
        if name not in allowed and not (api == "count_tokens" and name == "max_tokens"):
            raise _invalid(f"{name}: Extra inputs are not permitted")
    model = _required(body, "model", str)
    if api == "complete":
        chars = _check_prompt(_required(body, "prompt", str))
        cap_name = "max_tokens_to_sample"
    else:
        chars = _check_messages(_required(body, "messages", list))
        chars += _check_system(body.get("system"))
        cap_name = "max_tokens"
    cap = 1
    if api != "count_tokens":
        cap = _required(body, cap_name, int)
        if cap < 1:
            raise _invalid(f"{cap_name}: Input should be greater than or equal to 1")
        if cap > max_tokens_limit:
            raise _invalid(
                f"{cap_name}: {cap} > {max_tokens_limit}, which is the maximum allowed number "
                f"of output tokens for {model}"
            )
    _range(body, "temperature", float, 0.0, 1.0)
    _range(body, "top_p", float, 0.0, 1.0)
    _range(body, "top_k", int, 0, None)
    if "metadata" in body:
        _check(body["metadata"], dict, "metadata")
    if "stream" in body:
        _check(body["stream"], bool, "stream")
    stops = body.get("stop_sequences", [])
    _check(stops, list, "stop_sequences")
    for i, stop in enumerate(stops):
        _check(stop, str, f"stop_sequences.{i}")
    if not model.startswith("claude-"):
        raise Rejected(404, "not_found_error", f"model: {model}")
    return GenRequest(
        api=api,
        model=model,
        max_tokens=cap,
        stop_sequences=tuple(stops),
        stream=body.get("stream") is True,
        input_tokens=estimate_tokens(chars),
        key=content_key(body),
    )


def _check_prompt(prompt: str) -> int:
    """The legacy prompt: an optional system text, a Human turn first, an Assistant turn last."""
    human, assistant = "\n\nHuman:", "\n\nAssistant:"
    first_human = prompt.find(human)
    first_assistant = prompt.find(assistant)
    if first_human < 0 or 0 <= first_assistant < first_human:
        raise _invalid(
            f'prompt: prompt must start with "{human}" turn after an optional system prompt'
        )
    if prompt.rfind(assistant) < prompt.rfind(human):
        raise _invalid(f'prompt: prompt must end with "{assistant}" turn')
    return len(prompt)


def _check_messages(messages: list[Any]) -> int:
    """Roles, content types and non-empty text; returns the characters of content."""
    if not messages:
        raise _invalid("messages: at least one message is required")
    chars = 0
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        _check(message, dict, where)
        if "role" not in message:
            raise _invalid(f"{where}.role: Field required")
        if message["role"] not in ("user", "assistant"):
            raise _invalid(f"{where}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise _invalid(f"{where}.content: Field required")
        content = message["content"]
        final_assistant = i == len(messages) - 1 and message["role"] == "assistant"
        if isinstance(content, str):
            chars += len(content)
            empty = not content
        elif isinstance(content, list):
            chars += _check_blocks(content, f"{where}.content")
            empty = not content
        else:
            raise _invalid(f"{where}.content: Input should be a valid string or list")
        if empty and not final_assistant:
            raise _invalid(
                "messages: all messages must have non-empty content except for the optional "
                "final assistant message"
            )
    return chars


def _check_blocks(blocks: list[Any], where: str) -> int:
    chars = 0
    for j, block in enumerate(blocks):
        _check(block, dict, f"{where}.{j}")
        if "type" not in block:
            raise _invalid(f"{where}.{j}.type: Field required")
        _check(block["type"], str, f"{where}.{j}.type")
        if block["type"] == "text":
            if "text" not in block:
                raise _invalid(f"{where}.{j}.text: Field required")
            text = block["text"]
            _check(text, str, f"{where}.{j}.text")
            if not text:
                raise _invalid("messages: text content blocks must be non-empty")
            chars += len(text)
        else:
            chars += len(str(block))
    return chars


def _check_system(system: Any) -> int:
    if system is None:
        return 0
    if isinstance(system, str):
        return len(system)
    if isinstance(system, list):
        return _check_blocks(system, "system")
    raise _invalid("system: Input should be a valid string or list")
