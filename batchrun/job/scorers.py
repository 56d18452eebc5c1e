"""The job's ``scorers:``: how each completion is scored, one frozen model per ``kind``.

A scorer has a ``name`` (``[A-Za-z0-9_.-]+``, unique in the job: it names its rows in
``scores.parquet``) and a ``kind``, which picks the model that reads the rest (a union
discriminated by ``kind``). Templates (``target``, ``pattern``, ``prompt``) are parsed here;
whether the columns they name (and an SQL expression's) exist is checked against the input's
header before a run sends anything and before scoring
(:func:`batchrun.preflight.check_columns`), since the job must not read the input. Regular
expressions and SQL expressions are compiled here, so a typo is an exit 2 before anything is
sent. Validates at the boundary, then freezes; it must not read data or run the user's code.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from batchrun.job.sections import Section
from batchrun.job.templates import columns_of, parse_template

__all__ = [
    "CHOICE_PATTERN",
    "ChoiceScorer",
    "ExactScorer",
    "IncludesScorer",
    "JsonScorer",
    "ModelScorer",
    "PythonScorer",
    "RegexScorer",
    "Scorer",
    "SqlScorer",
    "check_scorers",
]

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_FUNCTION = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
Normalize = Literal["strip", "lower", "collapse_whitespace", "strip_punctuation"]
# A letter on its own at the start of the reply ("B", "(B) Paris", "B. Paris", not "I think"),
# or after "answer" ("The answer is B", "Answer: (C)"): the first such letter is the choice.
CHOICE_PATTERN = r"^\s*\(?([A-Z])(?:[).:]|\s*$)|[Aa]nswer(?:\s+is)?\s*:?\s*\(?([A-Z])\b"


class _Scorer(Section):
    name: str = Field(description="names the scorer's rows in scores.parquet, e.g. name: exact")

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("must be letters, digits, '_', '.' or '-', e.g. name: exact")
        return value

    @field_validator("target", "prompt", "system", check_fields=False)
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None:
            parse_template(value)
        return value

    def columns(self) -> list[str]:
        """Columns the scorer's templates name (input or result columns)."""
        return []


class _Compared(_Scorer):
    target: str = Field(description='a template over input columns, e.g. target: "{answer}"')
    normalize: tuple[Normalize, ...] = Field(default=("strip",), strict=False)

    def columns(self) -> list[str]:
        return columns_of(parse_template(self.target))


class ExactScorer(_Compared):
    """1 when the completion equals ``target`` (both normalised), else 0."""

    kind: Literal["exact"]


class IncludesScorer(_Compared):
    """1 when the completion contains ``target`` (both normalised), else 0."""

    kind: Literal["includes"]


class RegexScorer(_Scorer):
    """1 when ``pattern`` matches; with ``target``, the extracted ``group`` (0: the whole
    match) compared with it. Column values in the pattern are matched literally."""

    kind: Literal["regex"]
    pattern: str = Field(description=r'a Python regex, a template, e.g. pattern: "\\b{answer}\\b"')
    group: int | str | None = None
    target: str | None = None
    normalize: tuple[Normalize, ...] = Field(default=("strip",), strict=False)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        parts = parse_template(value)
        literal = "".join(text + ("x" if col else "") for text, col in parts)
        try:
            re.compile(literal)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        return value

    def columns(self) -> list[str]:
        found = columns_of(parse_template(self.pattern))
        return found + (columns_of(parse_template(self.target)) if self.target else [])


class JsonScorer(_Scorer):
    """1 when the completion parses as JSON (and, with ``schema``, validates against it)."""

    kind: Literal["json"]
    # A JSON schema, or the path of a .json file holding one (relative to the job file).
    schema_: dict[str, Any] | str | None = Field(default=None, alias="schema")

    model_config = ConfigDict(populate_by_name=True)


class ChoiceScorer(_Scorer):
    """The multiple-choice letter ``pattern`` finds (its first group that matched), compared
    with ``target``."""

    kind: Literal["choice"]
    target: str = Field(description='the right letter, a template, e.g. target: "{gold}"')
    pattern: str = CHOICE_PATTERN

    @field_validator("pattern")
    @classmethod
    def _one_group(cls, value: str) -> str:
        try:
            groups = re.compile(value).groups
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        if groups < 1:
            raise ValueError(r"needs a group around the letter, e.g. 'Answer: \(?([A-E])'")
        return value

    def columns(self) -> list[str]:
        return columns_of(parse_template(self.target))


class SqlScorer(_Scorer):
    """An expression in polars SQL over the result and input columns, evaluated vectorised;
    true/false count as 1/0."""

    kind: Literal["sql"]
    expression: str = Field(min_length=1, description='e.g. expression: "length(completion) < 200"')

    @field_validator("expression")
    @classmethod
    def _parses(cls, value: str) -> str:
        import polars as pl  # ~0.2 s: loaded when a job has an sql scorer, not to read any job

        try:
            pl.sql_expr(value)
        except pl.exceptions.PolarsError as exc:
            first = str(exc).strip().splitlines()[0]
            raise ValueError(f"not a polars SQL expression: {first}") from None
        return value

    def columns(self) -> list[str]:
        """The columns the expression reads, so that a typo in one is an exit 2 before the run
        sends anything, not after it (polars is loaded already: the expression was parsed)."""
        import polars as pl

        return pl.sql_expr(self.expression).meta.root_names()


class ModelScorer(_Scorer):
    """A judge: ``prompt`` (over input and result columns) sent to ``model``; its reply's
    grade (the last match of ``grade_pattern``) mapped through ``values``, or read as a number
    (scaled to 0..1 by ``range``). Any other ``request.*`` key may be given beside ``model``;
    the judge's request is the job's with those keys, and without the generation's tools,
    output format, thinking, sampling and samples."""

    # Extra keys are request keys: Job checks them by deriving the judge's request.
    model_config = ConfigDict(extra="allow")

    kind: Literal["model"]
    model: str | None = Field(default=None, min_length=1)
    prompt: str = Field(min_length=1, description="the judge's user turn, a template")
    system: str | None = None
    grade_pattern: str = Field(description='e.g. grade_pattern: "GRADE: ([CI])"')
    values: dict[str, float] | None = None
    range: tuple[float, float] | None = Field(default=None, strict=False)

    @field_validator("values", mode="before")
    @classmethod
    def _keys_as_text(cls, value: Any) -> Any:
        # YAML reads `{1: 1, 0: 0}` with number keys, and yes/no as booleans.
        if isinstance(value, dict):
            return {str(k).lower() if isinstance(k, bool) else str(k): v for k, v in value.items()}
        return value

    @field_validator("grade_pattern")
    @classmethod
    def _one_group(cls, value: str) -> str:
        try:
            groups = re.compile(value).groups
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        if groups != 1:
            raise ValueError(r"needs exactly one group around the grade, e.g. 'GRADE: ([CI])'")
        return value

    @model_validator(mode="after")
    def _request_keys(self) -> ModelScorer:
        from pydantic import ValidationError

        from batchrun.job.request import RequestConfig

        extra = self.model_extra or {}
        known = set(RequestConfig.model_fields)
        for key in extra:
            if key not in known:
                raise ValueError(
                    f"{key}: not a key of a model scorer nor of request; a judge takes name, "
                    "kind, prompt, system, grade_pattern, values, range and any request key "
                    f"({', '.join(sorted(known))})"
                )
        try:
            RequestConfig.model_validate({"model": self.model or "claude-haiku-4-5", **extra})
        except ValidationError as exc:
            raise ValueError(_first(exc)) from None
        return self

    @model_validator(mode="after")
    def _grading(self) -> ModelScorer:
        if self.values is not None and self.range is not None:
            raise ValueError("give values (graded by letter) or range (a number), not both")
        if self.range is not None and not self.range[0] < self.range[1]:
            raise ValueError(f"range must be [low, high] with low < high, got {list(self.range)}")
        return self

    def request_changes(self) -> dict[str, Any]:
        """The judge's request keys, as ``RequestConfig.derive`` takes them."""
        reset = {
            "samples": 1,
            "output_format": None,
            "tools": (),
            "tool_choice": None,
            "thinking": None,
            "effort": None,
            "temperature": None,
            "top_p": None,
            "top_k": None,
            "stop_sequences": (),
        }
        model = {"model": self.model} if self.model is not None else {}
        return {**reset, **model, **(self.model_extra or {})}

    def columns(self) -> list[str]:
        found = columns_of(parse_template(self.prompt))
        return found + (columns_of(parse_template(self.system)) if self.system else [])


class PythonScorer(_Scorer):
    """The user's own ``module:function``, called with a polars DataFrame of rows and
    returning one score a row (runs the user's code, from the job file's folder)."""

    kind: Literal["python"]
    function: str = Field(description="module:function, e.g. function: my_scores:score")

    @field_validator("function")
    @classmethod
    def _shape(cls, value: str) -> str:
        if not _FUNCTION.fullmatch(value):
            raise ValueError("must be module:function, e.g. function: my_scores:score")
        return value


Scorer = Annotated[
    ExactScorer
    | IncludesScorer
    | RegexScorer
    | JsonScorer
    | ChoiceScorer
    | SqlScorer
    | ModelScorer
    | PythonScorer,
    Field(discriminator="kind"),
]


def check_scorers(scorers: tuple[Any, ...], request: Any) -> None:
    """Rules across scorers and the job: unique names; each judge's request (the job's with
    its keys) valid as a whole. Raises ``ValueError`` naming ``scorers[i]``."""
    from pydantic import ValidationError

    seen: dict[str, int] = {}
    for i, scorer in enumerate(scorers):
        if scorer.name in seen:
            raise ValueError(
                f"scorers[{i}] and scorers[{seen[scorer.name]}] are both named {scorer.name!r}; "
                "scorer names must be unique (they name rows in scores.parquet)"
            )
        seen[scorer.name] = i
        if isinstance(scorer, ModelScorer):
            try:
                request.derive(scorer.request_changes())
            except ValidationError as exc:
                raise ValueError(f"scorers[{i}] ({scorer.name}): {_first(exc)}") from None


def _first(exc: Any) -> str:
    err = exc.errors(include_url=False)[0]
    key = ".".join(map(str, err["loc"]))
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{key}: {msg}" if key else msg
