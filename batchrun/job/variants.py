"""The job file's ``variants``: one job, several requests per input row, compared side by side.

A variant has a name, ``request`` keys that replace the job's (the rest of ``request`` is
shared) and ``input`` templates that replace the job's (``prompt``, ``system``,
``messages_column`` only: the rows are the same for every variant). A job without
``variants`` runs one variant, :data:`DEFAULT`. :func:`resolve` makes each variant's whole
request (``RequestConfig.derive``, validated again) and input, as a :class:`Variant`; errors
name the variant by its index and name, at the key (``variants[1].request.max_tokens``).
Validates at the boundary; reads no file, sends nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from batchrun.job.messages import Describer
from batchrun.job.request import RequestConfig
from batchrun.job.sections import InputConfig, Section, checked_template

__all__ = ["DEFAULT", "RUN_LEVEL", "Variant", "VariantConfig", "VariantInput", "resolve"]

DEFAULT = "default"  # the one variant of a job without ``variants``
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# Request keys that are the run's, the same for every variant: one API and one mode per run
# folder, and every variant runs every sample of every row.
RUN_LEVEL = {
    "api": "one run speaks one API",
    "mode": "one run streams or batches all its requests",
    "samples": "every variant runs every sample of every row, so that they compare",
}
_INPUT_KEYS = ("prompt", "system", "messages_column")


def _problem(loc: tuple[str | int, ...], message: str, value: Any) -> InitErrorDetails:
    """One problem at ``loc`` (under the field or model raising it), in ``message``'s words."""
    return InitErrorDetails(type=PydanticCustomError("variant", message), loc=loc, input=value)


def _raise(title: str, problems: list[InitErrorDetails]) -> None:
    if problems:
        raise ValidationError.from_exception_data(title, problems)


class VariantInput(Section):
    """The input templates a variant replaces; the rows and their ids are the job's."""

    prompt: str | None = Field(default=None, min_length=1)
    system: str | None = None
    messages_column: str | None = Field(default=None, min_length=1)

    _template = field_validator("prompt", "system")(checked_template)


class VariantConfig(Section):
    """One entry of ``variants``: its name and what it changes."""

    name: str = Field(description="the variant's name, e.g. name: haiku-low")
    request: dict[str, Any] = Field(default_factory=dict)
    input: VariantInput = VariantInput()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(
                "must be letters, digits, '.', '_' or '-' (it names rows and batch ids), "
                "e.g. name: haiku-low"
            )
        return value

    @field_validator("input", mode="before")
    @classmethod
    def _input_keys(cls, value: Any) -> Any:
        if isinstance(value, dict):
            _raise(
                "input",
                [
                    _problem(
                        (key,),
                        f"a variant overrides only {', '.join(_INPUT_KEYS)}; input.{key} is "
                        "the job's, the same for every variant (set it under input:, or run "
                        "another job)",
                        value[key],
                    )
                    for key in value
                    if key not in _INPUT_KEYS
                ],
            )
        return value

    @field_validator("request")
    @classmethod
    def _request_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        problems = []
        for key, item in value.items():
            if key in RUN_LEVEL:
                message = (
                    f"request.{key} is the run's, the same for every variant ({RUN_LEVEL[key]});"
                    f" set it under request:, not in a variant"
                )
            elif key not in RequestConfig.model_fields:
                message = Describer(RequestConfig, ()).unknown_key((), str(key))
            else:
                continue
            problems.append(_problem((key,), message, item))
        _raise("request", problems)
        return value


@dataclass(frozen=True, slots=True)
class Variant:
    """A variant as it runs: its whole request and input. ``index`` is its place in
    ``variants`` (``None``: the job has none, and this is :data:`DEFAULT`); ``replaced``:
    the input keys it sets itself."""

    name: str
    request: RequestConfig
    input: InputConfig
    index: int | None = None
    replaced: frozenset[str] = frozenset()

    def input_key(self, key: str) -> str:
        """Where ``input.KEY`` of this variant is set, as messages name it."""
        if self.index is None or key not in self.replaced:
            return f"input.{key}"
        return f"variants[{self.index}].input.{key}"

    @property
    def shown(self) -> str:
        """The variant as messages name it: ``variants[1] (haiku)``."""
        return self.name if self.index is None else f"variants[{self.index}] ({self.name})"


def resolve(
    configs: Sequence[VariantConfig],
    request: RequestConfig,
    inputs: InputConfig,
    check: Callable[[RequestConfig], None] = lambda request: None,
) -> tuple[Variant, ...]:
    """Each variant's whole request and input, in the order their requests go out (by name,
    as ``results.parquet`` is ordered); :data:`DEFAULT` alone without ``configs``. ``check``
    applies the job's rules across sections to each request (raising ``ValueError``).
    Raises a pydantic ``ValidationError`` located under ``variants``."""
    if not configs:
        return (Variant(DEFAULT, request, inputs),)
    problems: list[InitErrorDetails] = []
    seen: dict[str, int] = {}
    found: list[Variant] = []
    for i, config in enumerate(configs):
        where = f"variants[{i}] ({config.name})"
        if config.name in seen:
            problems.append(
                _problem(
                    ("variants", i, "name"),
                    f"{config.name!r} is also the name of variants[{seen[config.name]}]; "
                    "names must be unique",
                    config.name,
                )
            )
            continue
        seen[config.name] = i
        try:
            derived = request.derive(config.request)
            check(derived)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                message = err["msg"].removeprefix("Value error, ")
                loc = ("variants", i, "request", *err["loc"])
                problems.append(_problem(loc, f"{where}: {message}", err.get("input")))
            continue
        except ValueError as exc:
            problems.append(_problem(("variants", i, "request"), f"{where}: {exc}", config.request))
            continue
        given = config.input.model_dump(exclude_unset=True)
        if "prompt" in given and "messages_column" not in given:
            given["messages_column"] = None  # the two are alternatives: one replaces the other
        if "messages_column" in given and "prompt" not in given:
            given["prompt"] = None
        try:
            merged = InputConfig.model_validate({**inputs.model_dump(), **given})
        except ValidationError as exc:
            message = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
            problems.append(_problem(("variants", i, "input"), f"{where}: {message}", given))
            continue
        found.append(Variant(config.name, derived, merged, i, frozenset(given)))
    _raise("variants", problems)
    return tuple(sorted(found, key=lambda v: v.name))
