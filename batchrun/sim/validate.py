"""Simulator: request validation, as the API does it. Headers and a JSON body in, a request out.

Pure: no HTTP objects, no clock. Error messages imitate the API's (``messages: Field required``,
``max_tokens: Input should be a valid integer``, ``messages: roles must alternate between "user"
and "assistant" ...``, ``prompt is too long: N tokens > M maximum``) so that clients are tested
against what the real service says. Stricter than today's API in one place, on purpose: the
first message is ``user`` and roles alternate (the API used to require it and now merges
consecutive turns; batchrun never sends such a conversation). The request's
``anthropic-version`` matters: on 2026-10-21 ``temperature``, ``top_p`` and ``top_k`` are extra
inputs, and so are a ``document`` block from the assistant and a cited user text block; a model
of the catalogue (``models``) brings its output limit, context window, kind of thinking and
whether it takes non-default sampling values. Every input is answered with a :class:`Rejected`
or a :class:`GenRequest`, never another exception. It must not generate text or pick faults.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from batchrun.sim.models import DEFAULT, ModelSpec, lookup
from batchrun.sim.text import content_key, estimate_tokens

__all__ = [
    "NEW_VERSION",
    "Api",
    "GenRequest",
    "Rejected",
    "check_headers",
    "parse_body",
    "validate",
]

Api = Literal["messages", "complete", "count_tokens"]

NEW_VERSION = "2026-10-21"  # from this version on, no sampling parameters
SAMPLING = ("temperature", "top_p", "top_k")
EFFORTS = ("low", "medium", "high", "xhigh", "max")
CONTEXT_WINDOW = 200_000  # tokens; a longer prompt is a 400, as for every current model
_MAX_DEPTH = 64  # JSON nesting; far beyond any real request, well within Python's stack
_VERSION = re.compile(r"\d{4}-\d{2}-\d{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")

_MESSAGES_FIELDS = frozenset(
    "model messages max_tokens system stop_sequences temperature top_p top_k metadata stream "  # noqa: SIM905
    "tools tool_choice thinking service_tier container mcp_servers context_management "
    "output_config cache_control inference_geo speed".split()
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
    version: str = "2023-06-01"
    spec: ModelSpec = DEFAULT
    body: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _invalid(message: str) -> Rejected:
    return Rejected(400, "invalid_request_error", message)


def _unparsable(reason: object) -> Rejected:
    return _invalid(f"There was an error parsing the body of your request: {reason}")


def check_headers(headers: Mapping[str, str], *, api_key: str | None) -> str:
    """The API's header checks: a key (``x-api-key`` or ``Bearer``) and ``anthropic-version``.

    ``api_key`` is the one key accepted; ``None`` accepts any non-empty key. Returns the version.
    """
    key = headers.get("x-api-key")
    authorization = headers.get("authorization", "")
    if key is None and authorization.lower().startswith("bearer "):
        key = authorization[7:].strip()
    if not key:
        raise Rejected(401, "authentication_error", "x-api-key header is required")
    if api_key is not None and key != api_key:
        raise Rejected(401, "authentication_error", "invalid x-api-key")
    version = headers.get("anthropic-version")
    if not version:
        raise _invalid("anthropic-version: header is required")
    if not _VERSION.fullmatch(version.strip()):
        raise _invalid(f"anthropic-version: {version[:40]!r} is not a valid version")
    return version.strip()


def parse_body(raw: bytes) -> Any:
    """The request body as JSON, strictly: UTF-8, no NaN or Infinity, bounded nesting."""

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not valid JSON")

    try:
        return json.loads(raw.decode("utf-8"), parse_constant=no_constant)
    except UnicodeDecodeError as exc:
        raise _unparsable(f"invalid UTF-8 at byte {exc.start}") from exc
    except RecursionError as exc:
        raise _unparsable("the JSON is nested too deeply") from exc
    except ValueError as exc:
        raise _unparsable(exc) from exc


def _scan(body: Any) -> None:
    """Refuse what JSON cannot carry or the simulator cannot echo: lone surrogates, NaN,
    Infinity, and nesting deeper than any request needs. Iterative, so depth cannot hurt."""
    stack = [(body, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise _unparsable("the JSON is nested too deeply")
        if isinstance(value, str) and _SURROGATE.search(value):
            raise _unparsable("a string holds a lone UTF-16 surrogate")
        if isinstance(value, float) and not math.isfinite(value):
            raise _unparsable(f"{json.dumps(value)} is not valid JSON")
        if isinstance(value, dict):
            stack.extend((k, depth + 1) for k in value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


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


def validate(
    api: Api,
    body: Any,
    *,
    max_tokens_limit: int,
    context_window: int = CONTEXT_WINDOW,
    version: str = "2023-06-01",
    known_models_only: bool = False,
) -> GenRequest:
    """Check ``body`` for ``api`` as the API would; raise :class:`Rejected` on the first fault.

    ``version`` is the request's ``anthropic-version``; ``known_models_only`` answers 404 for a
    model the simulator's table does not know or knows as retired.
    """
    if not isinstance(body, dict):
        raise _invalid("body: Input should be a valid dictionary")
    _scan(body)
    allowed = _COMPLETE_FIELDS if api == "complete" else _MESSAGES_FIELDS
    new = api != "complete" and version >= NEW_VERSION
    for name in body:
        removed = new and name in SAMPLING
        if removed or (
            name not in allowed and not (api == "count_tokens" and name == "max_tokens")
        ):
            raise _invalid(f"{name}: Extra inputs are not permitted")
    model = _required(body, "model", str)
    if not model:
        raise _invalid("model: String should have at least 1 character")
    spec = lookup(model)
    if api == "complete":
        chars = _check_prompt(_required(body, "prompt", str))
        cap_name = "max_tokens_to_sample"
    else:
        chars = _check_messages(_required(body, "messages", list), new_version=new)
        chars += _check_system(body.get("system"))
        chars += _check_features(body, spec or DEFAULT)
        cap_name = "max_tokens"
    if spec is not None and spec.max_output is not None:
        max_tokens_limit = spec.max_output
    if spec is not None and spec.context_window is not None:
        context_window = spec.context_window
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
    if spec is not None and not spec.sampling:
        _check_default_sampling(body, model)
    _check_metadata(body)
    if "stream" in body:
        _check(body["stream"], bool, "stream")
    stops = body.get("stop_sequences", [])
    _check(stops, list, "stop_sequences")
    for i, stop in enumerate(stops):
        _check(stop, str, f"stop_sequences.{i}")
    if not model.startswith("claude-") or (known_models_only and (spec is None or spec.retired)):
        raise Rejected(404, "not_found_error", f"model: {model}")
    if api != "complete" and "thinking" in body:
        _check_thinking(body, spec or DEFAULT, cap, api)
    tokens = estimate_tokens(chars)
    if api != "count_tokens" and tokens > context_window:
        raise _invalid(f"prompt is too long: {tokens} tokens > {context_window} maximum")
    return GenRequest(
        api=api,
        model=model,
        max_tokens=cap,
        stop_sequences=tuple(stops),
        stream=body.get("stream") is True,
        input_tokens=tokens,
        key=content_key(body),
        version=version,
        spec=spec or DEFAULT,
        body=body,
    )


def _check_metadata(body: dict[str, Any]) -> None:
    if "metadata" not in body:
        return
    metadata = body["metadata"]
    _check(metadata, dict, "metadata")
    for name, value in metadata.items():
        if name != "user_id":
            raise _invalid(f"metadata.{name}: Extra inputs are not permitted")
        if value is not None:
            _check(value, str, "metadata.user_id")
            if len(value) > 256:
                raise _invalid("metadata.user_id: String should have at most 256 characters")


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


def _check_messages(messages: list[Any], *, new_version: bool = False) -> int:
    """Roles, alternation, content types and non-blank text; returns the characters of content."""
    if not messages:
        raise _invalid("messages: at least one message is required")
    chars = 0
    previous = None
    for i, message in enumerate(messages):
        where = f"messages.{i}"
        _check(message, dict, where)
        if "role" not in message:
            raise _invalid(f"{where}.role: Field required")
        role = message["role"]
        if role not in ("user", "assistant"):
            raise _invalid(f"{where}.role: Input should be 'user' or 'assistant'")
        if previous is None and role != "user":
            raise _invalid('messages: first message must use the "user" role')
        if role == previous:
            raise _invalid(
                'messages: roles must alternate between "user" and "assistant", '
                f'but found multiple "{role}" roles in a row'
            )
        previous = role
        if "content" not in message:
            raise _invalid(f"{where}.content: Field required")
        content = message["content"]
        final_assistant = i == len(messages) - 1 and role == "assistant"
        if isinstance(content, str):
            chars += len(content)
            empty, tail = not content, content
            if content and not content.strip() and not final_assistant:
                raise _invalid("messages: text content blocks must contain non-whitespace text")
        elif isinstance(content, list):
            chars += _check_blocks(content, f"{where}.content")
            if new_version:
                _check_new_blocks(content, role, f"{where}.content")
            last = content[-1] if content else {}
            empty, tail = not content, last.get("text", "") if last.get("type") == "text" else ""
        else:
            raise _invalid(f"{where}.content: Input should be a valid string or list")
        if empty and not final_assistant:
            raise _invalid(
                f"{where}: all messages must have non-empty content except for the optional "
                "final assistant message"
            )
        if final_assistant and tail != tail.rstrip():
            raise _invalid("messages: final assistant content cannot end with trailing whitespace")
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
            if not text.strip():
                raise _invalid("messages: text content blocks must contain non-whitespace text")
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
        for j, block in enumerate(system):
            if isinstance(block, dict) and block.get("type") != "text":
                raise _invalid(f"system.{j}.type: Input should be 'text'")
        return _check_blocks(system, "system")
    raise _invalid("system: Input should be a valid string or list")


def _check_new_blocks(blocks: list[Any], role: str, where: str) -> None:
    """What version 2026-10-21 refuses in a conversation: a ``document`` block in an assistant
    message, a text block with non-empty ``citations`` in a user message."""
    for j, block in enumerate(blocks):
        if role == "assistant" and block.get("type") == "document":
            raise _invalid(f"{where}.{j}: document blocks are not permitted in assistant messages")
        if role == "user" and block.get("type") == "text" and block.get("citations"):
            raise _invalid(
                f"{where}.{j}.citations: citations are not permitted on text blocks in user "
                "messages"
            )


def _check_default_sampling(body: dict[str, Any], model: str) -> None:
    """Current models take sampling parameters only at their defaults (top_k has none)."""
    for name, default in (("temperature", 1.0), ("top_p", 1.0), ("top_k", None)):
        if name in body and body[name] != default:
            raise _invalid(
                f"{name}: {model} does not support a non-default value; remove {name} from "
                "the request"
            )


def _check_features(body: dict[str, Any], spec: ModelSpec) -> int:
    """``tools``, ``tool_choice``, ``output_config``, ``service_tier`` and ``cache_control``:
    their shapes.

    Returns the characters the tool definitions add to the prompt.
    """
    chars = 0
    tools = body.get("tools", [])
    _check(tools, list, "tools")
    names = []
    for i, tool in enumerate(tools):
        _check(tool, dict, f"tools.{i}")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid(f"tools.{i}.name: Field required")
        if tool.get("type", "custom") == "custom" and not isinstance(
            tool.get("input_schema"), dict
        ):
            raise _invalid(f"tools.{i}.custom.input_schema: Field required")
        names.append(name)
        chars += len(json.dumps(tool))
    if len(set(names)) != len(names):
        raise _invalid("tools: Tool names must be unique.")
    choice = body.get("tool_choice")
    if choice is not None:
        _check(choice, dict, "tool_choice")
        kind = choice.get("type")
        if kind not in ("auto", "any", "tool", "none"):
            raise _invalid("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
        if kind == "tool" and choice.get("name") not in names:
            raise _invalid(f"tool_choice.name: Tool '{choice.get('name')}' not found in tools")
    config = body.get("output_config")
    if config is not None:
        _check(config, dict, "output_config")
        for name in config:
            if name not in ("effort", "format"):
                raise _invalid(f"output_config.{name}: Extra inputs are not permitted")
        if "effort" in config and config["effort"] not in EFFORTS:
            raise _invalid(
                "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'"
            )
        form = config.get("format")
        if form is not None:
            _check(form, dict, "output_config.format")
            if form.get("type") != "json_schema":
                raise _invalid("output_config.format.type: Input should be 'json_schema'")
            if not isinstance(form.get("schema"), dict):
                raise _invalid("output_config.format.json_schema.schema: Field required")
    if body.get("service_tier", "auto") not in ("auto", "standard_only"):
        raise _invalid("service_tier: Input should be 'auto' or 'standard_only'")
    marker = body.get("cache_control")
    if marker is not None:
        _check(marker, dict, "cache_control")
        if marker.get("type") != "ephemeral":
            raise _invalid("cache_control.type: Input should be 'ephemeral'")
        if marker.get("ttl", "5m") not in ("5m", "1h"):
            raise _invalid("cache_control.ephemeral.ttl: Input should be '5m' or '1h'")
    return chars


def _check_thinking(body: dict[str, Any], spec: ModelSpec, cap: int, api: Api) -> None:
    """``thinking``: ``adaptive`` (on models that have it), ``enabled`` with a budget below
    ``max_tokens``, or ``disabled``; and no forced tool use while thinking."""
    thinking = body["thinking"]
    _check(thinking, dict, "thinking")
    kind = thinking.get("type")
    if kind not in ("adaptive", "enabled", "disabled"):
        raise _invalid("thinking.type: Input should be 'adaptive', 'enabled' or 'disabled'")
    if kind != "disabled" and spec.thinking == "none":
        raise _invalid(f"thinking.type: thinking is not supported on {spec.id}")
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if budget is None:
            raise _invalid("thinking.enabled.budget_tokens: Field required")
        _check(budget, int, "thinking.enabled.budget_tokens")
        if budget < 1024:
            raise _invalid(
                "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
            )
        if api != "count_tokens" and budget >= cap:
            raise _invalid("`max_tokens` must be greater than `thinking.budget_tokens`.")
        if spec.thinking in ("adaptive", "adaptive_always"):
            raise _invalid(
                f"thinking.type: 'enabled' is not supported on {spec.id}; use 'adaptive'"
            )
    choice = body.get("tool_choice") or {}
    if kind != "disabled" and choice.get("type") in ("any", "tool"):
        raise _invalid("Thinking may not be enabled when tool_choice forces tool use.")
