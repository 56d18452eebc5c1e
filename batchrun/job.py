"""The job file: its schema, ``--set`` overrides and line-aware errors. The only YAML reader.

Validates at the boundary, then freezes: :func:`load_job` turns a YAML file into a frozen
:class:`Job` or raises one :class:`~batchrun.errors.JobError` listing every problem, each as
``FILE:LINE:COL: dotted.key: message``. It must not read the input data, touch the network or
read the API key (it only holds the name of the variable that holds it).
"""

from __future__ import annotations

import difflib
import glob
import re
import string
import types
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from batchrun.errors import JobError
from batchrun.sim.config import SimConfig

__all__ = [
    "EndpointConfig",
    "InputConfig",
    "Job",
    "LimitsConfig",
    "OutputConfig",
    "RequestConfig",
    "RetryConfig",
    "TelemetryConfig",
    "TimeoutsConfig",
    "load_job",
    "parse_template",
]

Loc = tuple[str | int, ...]
TemplatePart = tuple[str, str | None]  # (literal text, column whose value follows it, or None)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SECRET_KEYS = {"endpoint.api_key_env", "sim.api_key"}  # values never echoed in messages


def parse_template(text: str) -> tuple[TemplatePart, ...]:
    """Split a ``{column}`` template into (literal, column) parts; ``{{`` and ``}}`` are braces.

    Fields are plain column names, taken literally (``{a.b}`` is the column ``a.b``); format
    specs and conversions are refused. Raises ``ValueError`` with a user-facing message.
    """
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(
            f"invalid template: {exc} (write {{{{ or }}}} for a literal brace)"
        ) from None
    parts: list[TemplatePart] = []
    for literal, field, spec, conversion in parsed:
        if field is not None and field.strip() == "":
            raise ValueError("invalid template: empty field {}; name a column, e.g. {question}")
        if spec or conversion:
            raise ValueError(
                f"invalid template: field {{{field}...}} has a format spec or conversion; "
                "fields are plain column names"
            )
        if parts and parts[-1][1] is None:  # "{{" ends a literal early: join it to the next
            literal = parts.pop()[0] + literal
        parts.append((literal, field))
    return tuple(parts)


def _columns(parts: tuple[TemplatePart, ...]) -> list[str]:
    return list(dict.fromkeys(col for _, col in parts if col is not None))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class InputConfig(_Section):
    """Where the rows come from and how a row becomes a conversation."""

    path: str = Field(min_length=1)
    id_column: str | None = Field(default=None, min_length=1)  # None: the 0-based row number
    prompt: str | None = Field(default=None, min_length=1)
    system: str | None = None
    messages_column: str | None = Field(default=None, min_length=1)

    @field_validator("prompt", "system")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is not None:
            parse_template(value)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> InputConfig:
        if (self.prompt is None) == (self.messages_column is None):
            got = "both" if self.prompt is not None else "neither"
            raise ValueError(f"give exactly one of prompt or messages_column (got {got})")
        return self

    @property
    def prompt_parts(self) -> tuple[TemplatePart, ...]:
        """The prompt template, parsed (empty when ``messages_column`` is used)."""
        return parse_template(self.prompt) if self.prompt is not None else ()

    @property
    def system_parts(self) -> tuple[TemplatePart, ...] | None:
        """The system template, parsed; ``None`` when there is none."""
        return parse_template(self.system) if self.system is not None else None

    @property
    def prompt_columns(self) -> list[str]:
        """Input columns the prompt template uses, in order of first use."""
        return _columns(self.prompt_parts)

    @property
    def system_columns(self) -> list[str]:
        """Input columns the system template uses, in order of first use."""
        return _columns(self.system_parts or ())

    @property
    def template_columns(self) -> list[str]:
        """Input columns the prompt and system templates use, in order of first use."""
        return list(dict.fromkeys(self.prompt_columns + self.system_columns))


class RequestConfig(_Section):
    """What each request asks the model for."""

    api: Literal["messages", "complete"] = "messages"
    model: str = Field(default="claude-sonnet-4-5", min_length=1)
    max_tokens: int = Field(default=256, ge=1, le=128_000)
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)
    stop_sequences: tuple[str, ...] = Field(default=(), strict=False)
    samples: int = Field(default=1, ge=1)

    @field_validator("stop_sequences")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not s for s in value):
            raise ValueError("stop sequences must not be empty strings")
        return value


class EndpointConfig(_Section):
    """Where requests go and how they authenticate."""

    base_url: str = "sim"
    api_key_env: str = "ANTHROPIC_API_KEY"
    anthropic_version: str = Field(default="2023-06-01", pattern=r"^\d{4}-\d{2}-\d{2}$")

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value == "sim":
            return value
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise ValueError("the port is not a number in 0-65535") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be 'sim' or an http(s) URL such as http://127.0.0.1:8080")
        if parts.username or parts.password:
            raise ValueError("must not hold credentials; name the key's variable in api_key_env")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str) -> str:
        if value.startswith("sk-"):
            raise ValueError(
                "this looks like an API key itself; put the key in an environment variable "
                "and give the variable's name here (e.g. ANTHROPIC_API_KEY)"
            )
        if not _ENV_NAME.fullmatch(value):
            raise ValueError(
                "must be the name of an environment variable (letters, digits and _, "
                "not starting with a digit), e.g. ANTHROPIC_API_KEY"
            )
        return value

    @field_validator("anthropic_version", mode="before")
    @classmethod
    def _unquoted_date(cls, value: object) -> object:
        # YAML reads an unquoted 2023-06-01 as a date; accept it as the string it was meant to be.
        return value.isoformat() if isinstance(value, date) else value


class LimitsConfig(_Section):
    """Concurrency and rate budgets; ``None`` means unlimited."""

    concurrency: int = Field(default=16, ge=1, le=10_000)
    requests_per_minute: int | None = Field(default=None, gt=0)
    input_tokens_per_minute: int | None = Field(default=None, gt=0)
    output_tokens_per_minute: int | None = Field(default=None, gt=0)
    # Share the budgets with other batchrun runs on this host that use the same key and
    # base URL (state under state_dir, keyed by a hash of both; never the key itself).
    shared: bool = True
    state_dir: str | None = None  # null: $XDG_STATE_HOME/batchrun or ~/.local/state/batchrun
    # Count input tokens exactly with /v1/messages/count_tokens instead of estimating them.
    exact_input_tokens: bool = False


class RetryConfig(_Section):
    """Attempts per request and the exponential backoff between them."""

    max_attempts: int = Field(default=6, ge=1)
    initial_backoff_s: float = Field(default=1.0, gt=0)
    max_backoff_s: float = Field(default=60.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> RetryConfig:
        if self.initial_backoff_s > self.max_backoff_s:
            raise ValueError(
                f"initial_backoff_s ({self.initial_backoff_s}) is greater than "
                f"max_backoff_s ({self.max_backoff_s})"
            )
        return self


class TimeoutsConfig(_Section):
    """Seconds allowed to connect, to stay silent inside a stream, and for one attempt."""

    connect_s: float = Field(default=10.0, gt=0)
    idle_s: float = Field(default=60.0, gt=0)
    total_s: float = Field(default=600.0, gt=0)


class OutputConfig(_Section):
    """The run folder, relative to the job file's folder; may use ``{name}`` and ``{date}``."""

    dir: str = Field(default="outputs/{name}", min_length=1)

    @field_validator("dir")
    @classmethod
    def _placeholders(cls, value: str) -> str:
        try:
            parts = parse_template(value)
        except ValueError as exc:
            raise ValueError(str(exc).replace("template", "path")) from None
        unknown = [c for c in _columns(parts) if c not in ("name", "date")]
        if unknown:
            raise ValueError(
                f"unknown placeholder {{{unknown[0]}}}; use only {{name}} and {{date}}"
            )
        return value


class TelemetryConfig(_Section):
    """Where spans go, and whether they may hold prompt and completion text."""

    traces: Literal["file", "otlp", "console", "none"] = "file"
    capture_content: bool = False


class Job(_Section):
    """A validated, frozen job.

    ``path`` (the job file, absolute) and ``base_dir`` (its folder) are private attributes set by
    :func:`load_job`, so a job file cannot set them. A ``Job`` built in code has
    ``path = <cwd>/job.yaml`` until :meth:`with_path` says otherwise.
    """

    name: str
    input: InputConfig
    request: RequestConfig = RequestConfig()
    endpoint: EndpointConfig = EndpointConfig()
    limits: LimitsConfig = LimitsConfig()
    retry: RetryConfig = RetryConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    output: OutputConfig = OutputConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    sim: SimConfig = SimConfig()

    _path: Path = PrivateAttr(default_factory=lambda: Path.cwd() / "job.yaml")

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # `limits:` with every key commented out reads as null: it means "all defaults".
        if isinstance(data, dict):
            sections = [k for k, f in cls.model_fields.items() if _model_in(f.annotation)]
            return {k: ({} if k in sections and v is None else v) for k, v in data.items()}
        return data

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(
                "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or "
                "digit (it names folders and traces)"
            )
        return value

    @property
    def path(self) -> Path:
        """The job file, absolute."""
        return self._path

    @property
    def base_dir(self) -> Path:
        """The job file's folder: relative paths in the job are relative to it."""
        return self._path.parent

    def with_path(self, path: str | Path) -> Job:
        """A copy of this job that lives at ``path`` (made absolute)."""
        job = self.model_copy()
        job._path = Path(path).expanduser().resolve()
        return job

    def run_dir(self, now: datetime) -> Path:
        """The run folder: ``output.dir`` with ``{name}`` and ``{date}`` (UTC) filled in."""
        if now.tzinfo is None:
            raise ValueError("run_dir needs an aware datetime")
        day = now.astimezone(UTC).strftime("%Y-%m-%d")
        return self.base_dir / Path(self.output.dir.format(name=self.name, date=day)).expanduser()

    def input_paths(self) -> list[Path]:
        """The input files, sorted; ``input.path`` may be a glob. None found is a JobError."""
        pattern = str(Path(self.input.path).expanduser())
        if not glob.has_magic(pattern):
            path = self.base_dir / pattern
            if not path.is_file():
                raise JobError(f"input.path: no such file: {self.input.path}")
            return [path]
        found = glob.glob(pattern, root_dir=self.base_dir, recursive=True)
        paths = sorted(p for p in (self.base_dir / f for f in found) if p.is_file())
        if not paths:
            raise JobError(f"input.path: no file matches {self.input.path!r}")
        return paths

    def resolved(self) -> dict[str, Any]:
        """The job as run, for run.json: every key with its value, defaults filled, no secrets."""
        data = {"job_file": str(self.path), **self.model_dump(mode="json")}
        if data["sim"].get("api_key") is not None:
            data["sim"]["api_key"] = "***"
        return data


# --- loading -------------------------------------------------------------------------------


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class inside an annotation such as ``Fault``, ``list[Fault]``, ``X | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (list, tuple, Union, types.UnionType):
        for arg in get_args(annotation):
            if (found := _model_in(arg)) is not None:
                return found
    return None


def _model_at(loc: Loc) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Job
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model is not None else None
        model = _model_in(field.annotation) if field is not None else None
    return model


def _dotted(loc: Loc) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _unknown_key(section: Loc, key: str) -> str:
    model = _model_at(section)
    valid = list(model.model_fields) if model is not None else []
    close = difflib.get_close_matches(key, valid, n=1)
    if close:
        return f"unknown key; did you mean {close[0]!r}?"
    return "unknown key; valid keys here: " + ", ".join(valid)


def _show(value: object) -> str | None:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str | date):
        text = repr(value if isinstance(value, str) else value.isoformat())
        return text if len(text) <= 60 else text[:57] + "..."
    return None


def _describe(err: ErrorDetails) -> str:
    loc = tuple(err["loc"])
    kind = err["type"]
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return _unknown_key(loc[:-1], str(loc[-1]))
    msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "literal_error" and isinstance(err.get("input"), str):
        options = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
        close = difflib.get_close_matches(str(err.get("input")), options, n=1)
        if close:
            return f"{msg} (got {err.get('input')!r}; did you mean {close[0]!r}?)"
    shown = _show(err.get("input"))
    if shown is None or _dotted(loc) in _SECRET_KEYS or "@" in shown or "(got" in msg:
        return msg
    return f"{msg} (got {shown})"


class _Marks:
    """Where each dotted path of a YAML document starts: its key and its value."""

    def __init__(self, root: yaml.Node, problems: list[tuple[int, int, str]]) -> None:
        self.keys: dict[Loc, yaml.Mark] = {(): root.start_mark}
        self.values: dict[Loc, yaml.Mark] = {(): root.start_mark}
        self.sections: set[Loc] = set()  # paths whose value is a mapping: errors point at the key
        self._walk(root, (), problems)

    def _walk(self, node: yaml.Node, loc: Loc, problems: list[tuple[int, int, str]]) -> None:
        if isinstance(node, yaml.MappingNode):
            self.sections.add(loc)
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                sub = (*loc, key)
                if sub in self.keys and key != "<<":
                    first = self.keys[sub].line + 1
                    mark = key_node.start_mark
                    problems.append(
                        (
                            mark.line,
                            mark.column,
                            f"{_dotted(sub)}: duplicate key (first on line {first})",
                        )
                    )
                    continue
                self.keys[sub], self.values[sub] = key_node.start_mark, value_node.start_mark
                self._walk(value_node, sub, problems)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.keys[(*loc, i)] = self.values[(*loc, i)] = item.start_mark
                self._walk(item, (*loc, i), problems)

    def find(self, loc: Loc, *, at_key: bool) -> yaml.Mark:
        if loc in self.values:
            return self.keys[loc] if at_key or loc in self.sections else self.values[loc]
        while loc not in self.keys:  # a missing key: point at the section that lacks it
            loc = loc[:-1]
        return self.keys[loc]


def _parse_override(item: str) -> tuple[Loc, object]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ValueError("expected KEY=VALUE, e.g. limits.concurrency=64")
    loc: Loc = tuple(key.strip().split("."))
    model: type[BaseModel] = Job
    target: Any = None
    for i, part in enumerate(loc):
        if part not in model.model_fields:
            valid = [_dotted((*loc[:i], k)) for k in model.model_fields]
            close = difflib.get_close_matches(_dotted(loc[: i + 1]), valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown key {_dotted(loc[: i + 1])!r}{hint}")
        target = model.model_fields[str(part)].annotation
        if i < len(loc) - 1:
            sub = target
            if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
                raise ValueError(f"{_dotted(loc[: i + 1])} is a value, not a section")
            model = sub
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        if target not in (str, str | None):
            raise ValueError(
                f"the value is not valid YAML: {getattr(exc, 'problem', exc)}"
            ) from None
        value = raw
    # A text key keeps the text as written: `input.prompt={q}` is not a mapping, `name=2024` no int.
    if target in (str, str | None) and value is not None and not isinstance(value, str):
        value = raw
    return loc, value


def _apply(data: dict[str, Any], loc: Loc, value: object) -> None:
    node = data
    for part in loc[:-1]:
        child = node.get(str(part))
        if child is None:
            child = node[str(part)] = {}
        if not isinstance(child, dict):
            raise ValueError(f"{_dotted(loc[:-1])} in the job file is not a mapping")
        node = child
    node[str(loc[-1])] = value


def _read(path: Path, shown: str) -> tuple[Any, _Marks, list[tuple[int, int, str]]]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise JobError(f"{shown}: no such job file") from None
    except IsADirectoryError:
        raise JobError(f"{shown}: is a folder, not a job file") from None
    except OSError as exc:
        raise JobError(f"{shown}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise JobError(f"{shown}: not UTF-8 text (byte {exc.start})") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{shown}:{mark.line + 1}:{mark.column + 1}" if mark else shown
        raise JobError(f"{where}: YAML syntax error: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise JobError(f"{shown}: YAML error: {exc}") from None
    finally:
        loader.dispose()
    if node is None:
        raise JobError(f"{shown}: the job file is empty")
    if not isinstance(data, dict):
        raise JobError(f"{shown}:1:1: the job file must be a mapping of keys (name, input, ...)")
    problems: list[tuple[int, int, str]] = []
    return data, _Marks(node, problems), problems


def load_job(path: str | Path, overrides: Sequence[str] = ()) -> Job:
    """Read, override and validate a job file; every problem found is in one JobError.

    ``overrides`` are ``KEY=VALUE`` strings (``--set``): a dotted key of the schema and a YAML
    value, applied in order after the file is read.
    """
    shown = str(path)
    data, marks, problems = _read(Path(path), shown)
    lines = [f"{shown}:{line + 1}:{col + 1}: {msg}" for line, col, msg in problems]
    applied: dict[Loc, str] = {}
    for item in overrides:
        try:
            loc, value = _parse_override(item)
            _apply(data, loc, value)
        except ValueError as exc:
            lines.append(f"--set {_redact(item)}: {exc}")
        else:
            applied[loc] = item
    try:
        job = Job.model_validate(data)
    except ValidationError as exc:
        lines.extend(_report(exc, shown, marks, applied))
    if lines:
        raise JobError("\n".join(lines))
    return job.with_path(path)


def _redact(item: str) -> str:
    key = item.partition("=")[0].strip()
    return f"{key}=***" if key in _SECRET_KEYS else item


def _report(exc: ValidationError, shown: str, marks: _Marks, applied: dict[Loc, str]) -> list[str]:
    placed: list[tuple[int, int, str]] = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        line = f"{_dotted(loc) or '(top level)'}: {_describe(err)}"
        by = [item for o, item in applied.items() if loc[: len(o)] == o]
        if by:
            placed.append((-1, 0, f"--set {_redact(by[-1])}: {line}"))
        else:
            mark = marks.find(loc, at_key=err["type"] in ("extra_forbidden", "missing"))
            placed.append(
                (mark.line, mark.column, f"{shown}:{mark.line + 1}:{mark.column + 1}: {line}")
            )
    return [msg for *_, msg in sorted(placed, key=lambda p: (p[0], p[1]))]
