"""The legacy Text Completions API (``POST /v1/complete``): the prompt format, request body
and stream fold. It has no batch form and takes text only.

Part of :mod:`batchrun.apis`. :func:`validate_complete_prompt` is the one definition of the
legacy prompt rule. Pure code: no I/O, no retries, no clocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from batchrun.apis.anthropic import FIRST_VERSION, SAMPLING_KEYS, AnthropicApi
from batchrun.apis.fold import Classify, FoldBase, payload_str, stream_error
from batchrun.apis.tokens import text_tokens
from batchrun.models import Completion, RequestItem

__all__ = [
    "ASSISTANT",
    "COMPLETE",
    "HUMAN",
    "Complete",
    "CompleteFold",
    "complete_prompt",
    "validate_complete_prompt",
]

HUMAN = "\n\nHuman:"
ASSISTANT = "\n\nAssistant:"


class Complete(AnthropicApi):
    """``POST /v1/complete``, streamed. ``max_tokens`` is sent as ``max_tokens_to_sample``."""

    name = "complete"
    path = "/v1/complete"
    title = "the legacy Text Completions API"
    operation = "text_completion"
    text_only = True
    batchable = False
    accepts = SAMPLING_KEYS | {"metadata"}
    named_fields: Mapping[str, str] = {}  # it takes no request.extra
    default_version = FIRST_VERSION
    versions: frozenset[str] | None = frozenset({FIRST_VERSION})  # the legacy API's only one

    def __str__(self) -> str:
        return self.name

    def body(self, item: RequestItem, params: Mapping[str, Any]) -> dict[str, Any]:
        """The streaming request body: the item as a legacy prompt, with ``params``."""
        body: dict[str, Any] = {"model": params["model"], "prompt": complete_prompt(item)}
        body["max_tokens_to_sample"] = params["max_tokens"]
        for key, value in params.items():
            if key not in body and key != "max_tokens" and value is not None:
                body[key] = value
        body["stream"] = True
        return body

    count_tokens_path: str | None = None  # the legacy API has no token counting

    @staticmethod
    def estimate_input_tokens(body: Mapping[str, Any]) -> int:
        """The prompt's text: see :mod:`batchrun.apis.tokens`."""
        return text_tokens(str(body.get("prompt", "")))

    @staticmethod
    def output_reservation(body: Mapping[str, Any]) -> int:
        """What a request may write at most: its ``max_tokens_to_sample``."""
        value = body.get("max_tokens_to_sample", 0)
        return value if isinstance(value, int) and value > 0 else 0

    @staticmethod
    def count_tokens_body(body: Mapping[str, Any]) -> dict[str, Any] | None:
        return None

    def new_fold(self) -> CompleteFold:
        return CompleteFold(self.classify_event)


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


class CompleteFold(FoldBase):
    """Folds a legacy Text Completions stream into a Completion.

    The stream has no final event of its own: the ``completion`` event whose ``stop_reason`` is
    not null is the last one. A fragment is output only when it has text. No usage is sent, so
    ``output_tokens_seen`` counts fragments and the token columns stay ``None``.
    """

    _events = frozenset({"completion", "error"})

    def __init__(self, classify: Classify) -> None:
        super().__init__(classify)
        self._parts: list[str] = []
        self._id: str | None = None
        self._model: str | None = None
        self._stop_reason: str | None = None
        self._stop_sequence: str | None = None

    def _handle(self, name: str, payload: dict[str, Any]) -> bool:
        fragment = payload.get("completion", "")
        if not isinstance(fragment, str):
            raise stream_error("completion event whose 'completion' is not a string")
        self._model = payload_str(payload, "model") or self._model
        self._id = payload_str(payload, "id") or self._id
        stop_reason = payload_str(payload, "stop_reason")
        if stop_reason is not None:
            self._stop_reason = stop_reason
            self._stop_sequence = payload_str(payload, "stop")
            self.done = True
        if not fragment:
            return False
        self._parts.append(fragment)
        self.text_started = True  # every fragment is answer text
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


COMPLETE = Complete()
