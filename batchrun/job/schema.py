"""The job file's schema: every key, its default and its limits, as frozen pydantic models.

Validates at the boundary, then freezes: :func:`load_job` turns a YAML file and ``--set``
overrides into a frozen :class:`Job` or raises one :class:`~batchrun.errors.JobError` listing
every problem as ``FILE:LINE:COL: dotted.key: message`` (the reading is
:mod:`batchrun.jobfile`'s, the wording :mod:`batchrun.jobmessages`'). It must not read the
input data, touch the network or read the API key (it only holds the name of the variable that
holds it).
"""

from __future__ import annotations

import glob
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import SplitResult, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_serializer,
    field_validator,
    model_validator,
)

from batchrun.apis import APIS, Api, get_api
from batchrun.errors import JobError
from batchrun.job.messages import looks_like_key, model_in
from batchrun.job.reader import load_model
from batchrun.job.templates import TemplatePart, columns_of, parse_template
from batchrun.sim.config import SimConfig

__all__ = [
    "DEFAULT_PRICES",
    "EndpointConfig",
    "InputConfig",
    "Job",
    "LimitsConfig",
    "ModelPrice",
    "OutputConfig",
    "RequestConfig",
    "RetryConfig",
    "TelemetryConfig",
    "TimeoutsConfig",
    "load_job",
    "parse_template",
]


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Values never echoed in messages (a Redis URL may hold a password).
_SECRET_KEYS = {"endpoint.api_key_env", "sim.api_key", "limits.redis_url"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class InputConfig(_Section):
    """Where the rows come from and how a row becomes a conversation."""

    path: str = Field(
        min_length=1,
        description="the .csv or .parquet file (or a glob), relative to the job file, "
        "e.g. path: data/eval.csv",
    )
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
        return columns_of(self.prompt_parts)

    @property
    def system_columns(self) -> list[str]:
        """Input columns the system template uses, in order of first use."""
        return columns_of(self.system_parts or ())

    @property
    def template_columns(self) -> list[str]:
        """Input columns the prompt and system templates use, in order of first use."""
        return list(dict.fromkeys(self.prompt_columns + self.system_columns))


if TYPE_CHECKING:
    ApiName = str
else:
    ApiName = Literal[tuple(APIS)]  # the registry's names: a new API is a new choice

# The request keys that go on the wire, in the order a body holds them.
_WIRE_KEYS = ("model", "max_tokens", "stop_sequences", "temperature", "top_p", "top_k")


class RequestConfig(_Section):
    """What each request asks the model for."""

    api: ApiName = "messages"
    model: str = Field(default="claude-sonnet-4-5", min_length=1)
    max_tokens: int = Field(default=256, ge=1, le=128_000)
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)
    stop_sequences: tuple[str, ...] = Field(default=(), strict=False)
    samples: int = Field(default=1, ge=1)
    # stream: one streamed request per row, with timing; batch: the Message Batches API (half
    # the price, results within 24 hours, no timing columns).
    mode: Literal["stream", "batch"] = "stream"

    @field_validator("stop_sequences")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not s for s in value):
            raise ValueError("stop sequences must not be empty strings")
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
            raise ValueError(f"api: {api.name} does not take {', '.join(refused)}")
        return self

    @property
    def api_spec(self) -> Api:
        """The API this job speaks (its path, body, folds and error table)."""
        return get_api(self.api)

    @cached_property
    def params(self) -> dict[str, Any]:
        """The request keys sent with every request, as the API takes them: unset ones (null,
        an empty list) left out. Made once per job, not per request."""
        values = ((key, getattr(self, key)) for key in _WIRE_KEYS)
        return {
            key: list(value) if isinstance(value, tuple) else value
            for key, value in values
            if value is not None and value != ()
        }


def _split_url(value: str) -> SplitResult:
    """A URL's parts; a port that is not a number in 0-65535 is a validation error."""
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("the port is not a number in 0-65535") from None
    return parts


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
        parts = _split_url(value)
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
        if looks_like_key(value):
            raise ValueError(
                "this looks like an API key itself; never put the key in the job file or on the "
                "command line: put it in an environment variable (export ANTHROPIC_API_KEY=...) "
                "and give the variable's name here, e.g. api_key_env: ANTHROPIC_API_KEY"
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
    # With shared: share them with every host using this Redis instead (redis:// or rediss://).
    redis_url: str | None = None
    # Count input tokens exactly with /v1/messages/count_tokens instead of estimating them.
    exact_input_tokens: bool = False

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        # Messages never repeat the value: it may hold a password (see _SECRET_KEYS).
        if value is None:
            return value
        parts = _split_url(value)
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ValueError(
                "must be a redis:// or rediss:// URL such as redis://redis.internal:6379/0"
            )
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment; a password goes in user:pw@")
        if parts.path not in ("", "/") and not parts.path[1:].isdigit():
            raise ValueError("the path must be a database number, e.g. /0")
        return value

    @field_serializer("redis_url")
    def _redis_url_shown(self, value: str | None) -> str | None:
        # run.json holds the job as run, never a password.
        parts = urlsplit(value) if value is not None else None
        if parts is None or parts.password is None:
            return value
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


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
        unknown = [c for c in columns_of(parts) if c not in ("name", "date")]
        if unknown:
            raise ValueError(
                f"unknown placeholder {{{unknown[0]}}}; use only {{name}} and {{date}}"
            )
        return value


class TelemetryConfig(_Section):
    """Where spans go, and whether they may hold prompt and completion text."""

    traces: Literal["file", "otlp", "console", "none"] = "file"
    capture_content: bool = False


class ModelPrice(_Section):
    """What a model costs, in USD per million tokens at the standard (streaming) rate.

    Message Batches bill half of both rates (``BATCH_DISCOUNT`` in :mod:`batchrun.cost`).
    """

    input: float = Field(ge=0.0, description="USD per million input tokens, e.g. input: 3.0")
    output: float = Field(ge=0.0, description="USD per million output tokens, e.g. output: 15.0")


# Anthropic's list prices (USD per million tokens) when this table was written; the job's
# ``prices:`` section overrides or extends it. A model matches its own key or the longest key
# followed by "-" (claude-sonnet-4-5-20250929 takes claude-sonnet-4-5's price).
DEFAULT_PRICES: dict[str, ModelPrice] = {
    name: ModelPrice(input=rates[0], output=rates[1])
    for name, rates in {
        "claude-opus-4-5": (5.0, 25.0),
        "claude-opus-4-1": (15.0, 75.0),
        "claude-opus-4": (15.0, 75.0),
        "claude-sonnet-4-5": (3.0, 15.0),
        "claude-sonnet-4": (3.0, 15.0),
        "claude-3-7-sonnet": (3.0, 15.0),
        "claude-haiku-4-5": (1.0, 5.0),
        "claude-3-5-haiku": (0.8, 4.0),
        "claude-3-haiku": (0.25, 1.25),
    }.items()
}


class Job(_Section):
    """A validated, frozen job.

    ``path`` (the job file, absolute) and ``base_dir`` (its folder) are private attributes set by
    :func:`load_job`, so a job file cannot set them. A ``Job`` built in code has
    ``path = <cwd>/job.yaml`` until :meth:`with_path` says otherwise.
    """

    name: str = Field(description="the run's name, for its folder and traces, e.g. name: eval")
    input: InputConfig = Field(
        description='the rows to send, e.g. input: {path: data.csv, prompt: "{question}"}'
    )
    request: RequestConfig = RequestConfig()
    endpoint: EndpointConfig = EndpointConfig()
    limits: LimitsConfig = LimitsConfig()
    retry: RetryConfig = RetryConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    output: OutputConfig = OutputConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    sim: SimConfig = SimConfig()
    # The price table for the cost estimate: entries here override or extend DEFAULT_PRICES.
    prices: dict[str, ModelPrice] = Field(default_factory=lambda: dict(DEFAULT_PRICES))

    _path: Path = PrivateAttr(default_factory=lambda: Path.cwd() / "job.yaml")

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # `limits:` with every key commented out reads as null: it means "all defaults".
        if isinstance(data, dict):
            sections = [k for k, f in cls.model_fields.items() if model_in(f.annotation)]
            return {k: ({} if k in sections and v is None else v) for k, v in data.items()}
        return data

    @field_validator("prices", mode="before")
    @classmethod
    def _no_prices(cls, value: Any) -> Any:
        return {} if value is None else value  # `prices:` with nothing under it: the defaults

    @field_validator("prices")
    @classmethod
    def _over_defaults(cls, value: dict[str, ModelPrice]) -> dict[str, ModelPrice]:
        if any(not name.strip() for name in value):
            raise ValueError("a model name must not be empty, e.g. claude-sonnet-4-5: {...}")
        return {**DEFAULT_PRICES, **value}

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
        fix = f"relative paths start at the job file's folder, {self.base_dir}; fix input.path"
        if not glob.has_magic(pattern):
            path = self.base_dir / pattern
            if path.is_dir():
                raise JobError(
                    f"input.path: {self.input.path} is a folder; name a .csv or .parquet file "
                    f"in it, or a glob such as {Path(self.input.path) / '*.csv'}"
                )
            if not path.is_file():
                raise JobError(f"input.path: no such file: {self.input.path} ({fix})")
            return [path]
        found = glob.glob(pattern, root_dir=self.base_dir, recursive=True)
        paths = sorted(p for p in (self.base_dir / f for f in found) if p.is_file())
        if not paths:
            raise JobError(f"input.path: no file matches {self.input.path!r} ({fix})")
        return paths

    def resolved(self) -> dict[str, Any]:
        """The job as run, for run.json: every key with its value, defaults filled, no secrets."""
        data = {"job_file": str(self.path), **self.model_dump(mode="json")}
        if data["sim"].get("api_key") is not None:
            data["sim"]["api_key"] = "***"
        return data


def load_job(path: str | Path, overrides: Sequence[str] = ()) -> Job:
    """Read, override and validate a job file; every problem found is in one JobError.

    ``overrides`` are ``KEY=VALUE`` strings (``--set``): a dotted key of the schema and a YAML
    value, applied in order after the file is read.
    """
    return load_model(path, Job, overrides, secret_keys=_SECRET_KEYS).with_path(path)
