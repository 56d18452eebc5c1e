"""The job file's ``request`` section: what each request asks the model for.

Validates at the boundary, then freezes. Every key is checked when the job is read: its shape,
and against the model catalogue (:mod:`batchrun.job.catalogue`) what the model takes: a retired
model, ``max_tokens`` over its output limit and a ``thinking`` it refuses are errors. Which
keys an API takes, and how they become a body, is the API's (:mod:`batchrun.apis`). Rules that
need the ``endpoint`` section too (the version's) are :mod:`batchrun.job.schema`'s. It must not
read files (a path in ``output_format`` or ``tools`` is read by :func:`batchrun.job.load_job`),
touch the network or read the API key.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from batchrun.apis import APIS, Api, get_api
from batchrun.job.catalogue import lookup
from batchrun.job.sections import Section

__all__ = ["SAMPLING", "RequestConfig", "ThinkingConfig", "sampling_set"]

if TYPE_CHECKING:
    ApiName = str
else:
    ApiName = Literal[tuple(APIS)]  # the registry's names: a new API is a new choice

# The request keys sent with every request, in the order a body holds them; unset ones are left
# out. The API's body turns them into its wire fields (effort -> output_config.effort, ...).
_WIRE_KEYS = (
    "model",
    "max_tokens",
    "stop_sequences",
    "temperature",
    "top_p",
    "top_k",
    "thinking",
    "effort",
    "output_format",
    "tools",
    "tool_choice",
    "prompt_cache",
    "metadata",
    "service_tier",
    "extra",
)
SAMPLING = ("temperature", "top_p", "top_k")
_FILE_KINDS = {"output_format": (".json",), "tools": (".json", ".yaml", ".yml")}
_MIN_BUDGET = 1024  # the API's smallest thinking budget


class ThinkingConfig(Section):
    """``request.thinking``: sent as given, e.g. ``{type: adaptive}``."""

    type: Literal["adaptive", "enabled", "disabled"] = Field(
        description="adaptive, enabled (with budget_tokens) or disabled, e.g. type: adaptive"
    )
    budget_tokens: int | None = Field(default=None, ge=_MIN_BUDGET)
    display: str | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _budget(self) -> ThinkingConfig:
        if self.type == "enabled" and self.budget_tokens is None:
            raise ValueError(
                "type: enabled needs budget_tokens (at least 1024, below max_tokens), "
                "e.g. thinking: {type: enabled, budget_tokens: 4096}; or use {type: adaptive}"
            )
        if self.type != "enabled" and self.budget_tokens is not None:
            raise ValueError(
                f"budget_tokens goes with type: enabled only (got type: {self.type}); remove it"
            )
        return self


def sampling_set(request: RequestConfig, *, non_default: bool = False) -> list[str]:
    """The sampling keys a request sets, as ``key: value``; with ``non_default``, only values
    other than the API's defaults (temperature 1, top_p 1; any top_k)."""
    found = []
    for key in SAMPLING:
        value = getattr(request, key)
        if value is None or (non_default and key != "top_k" and value == 1.0):
            continue
        found.append(f"{key}: {value:g}")
    return found


class RequestConfig(Section):
    """What each request asks the model for."""

    api: ApiName = "messages"
    model: str = Field(min_length=1, description="the model to ask, e.g. model: claude-sonnet-5-5")
    max_tokens: int = Field(default=256, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)
    stop_sequences: tuple[str, ...] = Field(default=(), strict=False)
    samples: int = Field(default=1, ge=1)
    # stream: one streamed request per row, with timing; batch: the Message Batches API (half
    # the price, results within 24 hours, no timing columns).
    mode: Literal["stream", "batch"] = "stream"
    thinking: ThinkingConfig | None = None
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    # A JSON schema, or the path of a .json file holding one (relative to the job file).
    output_format: dict[str, Any] | str | None = None
    # Tool definitions as the API takes them, or the path of a JSON or YAML file holding the list.
    tools: Annotated[tuple[dict[str, Any], ...], Field(strict=False)] | str = ()
    tool_choice: dict[str, Any] | None = None
    prompt_cache: Literal["5m", "1h"] | None = None
    metadata: dict[str, Any] | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("stop_sequences")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not s for s in value):
            raise ValueError("stop sequences must not be empty strings")
        return value

    @field_validator("model")
    @classmethod
    def _not_retired(cls, value: str) -> str:
        info = lookup(value)
        if info is not None and info.status == "retired":
            raise ValueError(
                f"{value} was retired on {info.retired_on} (the API answers 404 "
                f"not_found_error); use its successor: model: {info.successor}"
            )
        return value

    @field_validator("max_tokens")
    @classmethod
    def _within_output_limit(cls, value: int, info: ValidationInfo) -> int:
        model = lookup(info.data.get("model", ""))
        if model is not None and value > model.max_output:
            raise ValueError(
                f"{value} is over {model.id}'s output limit of {model.max_output} tokens; "
                f"e.g. max_tokens: {model.max_output}"
            )
        return value

    @field_validator("thinking")
    @classmethod
    def _thinking_fits_model(
        cls, value: ThinkingConfig | None, info: ValidationInfo
    ) -> ThinkingConfig | None:
        if value is None:
            return value
        max_tokens = info.data.get("max_tokens")
        budget = value.budget_tokens
        if budget is not None and max_tokens is not None and budget >= max_tokens:
            raise ValueError(
                f"budget_tokens ({budget}) must be less than max_tokens ({max_tokens}): "
                f"raise max_tokens, e.g. max_tokens: {budget + 1024}"
            )
        name = info.data.get("model", "")
        model = lookup(name)
        if model is None:
            return value
        if model.thinking == "none":
            raise ValueError(f"{name} does not think; remove request.thinking")
        if value.type == "enabled" and model.thinking in ("adaptive", "adaptive_always"):
            raise ValueError(
                f"{name} takes adaptive thinking only ({{type: enabled}} answers 400): use "
                "thinking: {type: adaptive} and set the depth with request.effort, "
                "e.g. effort: high"
            )
        if value.type == "disabled" and model.thinking == "adaptive_always":
            raise ValueError(
                f"{name} always thinks; remove request.thinking, or set a lower request.effort "
                "(e.g. effort: low) to think less"
            )
        return value

    @field_validator("output_format")
    @classmethod
    def _schema(cls, value: dict[str, Any] | str | None) -> dict[str, Any] | str | None:
        if isinstance(value, str):
            return _file_name("output_format", value)
        if value is not None and value.get("type") == "json_schema" and "schema" in value:
            raise ValueError(
                "give the JSON schema itself; batchrun wraps it in {type: json_schema, schema}, "
                "e.g. output_format: {type: object, properties: {answer: {type: string}}}"
            )
        if value is not None and not value:
            raise ValueError("the schema is empty; e.g. output_format: {type: object, ...}")
        return value

    @field_validator("tools")
    @classmethod
    def _tools(cls, value: tuple[dict[str, Any], ...] | str) -> tuple[dict[str, Any], ...] | str:
        if isinstance(value, str):
            return _file_name("tools", value)
        names = [tool.get("name") for tool in value]
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name:
                raise ValueError(
                    f"tool {i} has no name; a tool is {{name, description, input_schema}}, "
                    "e.g. {name: lookup, input_schema: {type: object}}"
                )
        twice = sorted({str(n) for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"tool names must be unique ({', '.join(twice)} given twice)")
        return value

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        kind = value.get("type")
        if kind not in ("auto", "any", "tool", "none"):
            raise ValueError(
                f"type must be auto, any, tool or none (got {kind!r}), e.g. tool_choice: "
                "{type: tool, name: lookup}"
            )
        if kind == "tool" and not isinstance(value.get("name"), str):
            raise ValueError("type: tool needs the tool's name, e.g. {type: tool, name: lookup}")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        for key, item in (value or {}).items():
            if key != "user_id":
                raise ValueError(
                    f"the API takes only user_id here (got {key}), e.g. metadata: "
                    "{user_id: eval-2026-12}"
                )
            if item is not None and (not isinstance(item, str) or len(item) > 256):
                raise ValueError("user_id must be text of at most 256 characters")
        return value

    @model_validator(mode="after")
    def _fits_api(self) -> RequestConfig:
        api = get_api(self.api)
        if self.mode == "batch" and not api.batchable:
            batchable = " or ".join(f"api: {a.name}" for a in APIS.values() if a.batchable)
            raise ValueError(
                f"mode: batch needs {batchable}; {api.title} (api: {api.name}) has no batch "
                f"form: use mode: stream, or {batchable}"
            )
        refused = [key for key in self.params if key not in api.accepts]
        if refused:
            takes = [a.name for a in APIS.values() if all(k in a.accepts for k in refused)]
            them = "them" if len(refused) > 1 else "it"
            fix = f"use api: {takes[0]}, or remove {them}" if takes else f"remove {them}"
            raise ValueError(f"api: {api.name} does not take {', '.join(refused)}; {fix}")
        self._check_tool_choice()
        self._check_extra(api)
        return self

    def _check_tool_choice(self) -> None:
        choice = self.tool_choice
        if choice is None or choice["type"] == "none" or isinstance(self.tools, str):
            return
        if not self.tools:
            raise ValueError(
                f"tool_choice: {{type: {choice['type']}}} needs request.tools; give the tools, "
                "or remove tool_choice"
            )
        thinks = self.thinking is not None and self.thinking.type != "disabled"
        if choice["type"] in ("any", "tool") and thinks:
            raise ValueError(
                f"tool_choice: {{type: {choice['type']}}} forces a tool call, which the API "
                "refuses while thinking (a 400 for every request): use tool_choice: "
                "{type: auto}, or thinking: {type: disabled}"
            )
        names = [tool["name"] for tool in self.tools]
        if choice["type"] == "tool" and choice["name"] not in names:
            close = difflib.get_close_matches(choice["name"], names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f" (tools: {', '.join(names)})"
            raise ValueError(f"tool_choice names {choice['name']!r}, which is not a tool{hint}")

    def _check_extra(self, api: Api) -> None:
        for key in self.extra:
            named = api.named_fields.get(key)
            if named is not None:
                raise ValueError(
                    f"extra.{key} collides with {named}, which batchrun sets in the body: "
                    f"set it there (or remove extra.{key})"
                )

    def derive(self, changes: Mapping[str, Any]) -> RequestConfig:
        """This request with ``changes`` (job-file keys) in place of its own, validated again as
        a whole (a variant's or a judge's request; a nested key such as ``thinking`` is replaced,
        not merged). Raises pydantic's ``ValidationError`` naming the key, like the job's."""
        return type(self).model_validate({**self.model_dump(exclude_unset=True), **changes})

    @property
    def api_spec(self) -> Api:
        """The API this job speaks (its path, body, folds and error table)."""
        return get_api(self.api)

    @cached_property
    def params(self) -> dict[str, Any]:
        """The request keys sent with every request, by their job names, as the API's body
        takes them: unset ones (null, empty) left out, ``thinking`` as a mapping without its
        unset keys. Made once per job, not per request."""
        params: dict[str, Any] = {}
        for key in _WIRE_KEYS:
            value = getattr(self, key)
            if value is None or value == () or value == {}:
                continue
            if isinstance(value, ThinkingConfig):
                value = value.model_dump(exclude_none=True)
            params[key] = list(value) if isinstance(value, tuple) else value
        return params

    def files(self) -> dict[str, str]:
        """The keys given as a file path (``output_format``, ``tools``), with the path."""
        return {k: v for k in _FILE_KINDS if isinstance(v := getattr(self, k), str)}


def _file_name(key: str, value: str) -> str:
    kinds = _FILE_KINDS[key]
    if not value.lower().endswith(kinds):
        what = "a JSON schema mapping" if key == "output_format" else "a list of tools"
        raise ValueError(
            f"give {what}, or the path of a {' or '.join(kinds)} file holding it "
            f"(relative to the job file), e.g. {key}: {key}{kinds[0]}"
        )
    return value
