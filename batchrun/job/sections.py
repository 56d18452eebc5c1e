"""The job file's sections: every key of ``input``, ``endpoint``, ``limits``, ``retry``,
``timeouts``, ``output`` and ``telemetry``, its default and its limits, as frozen pydantic models
(``request`` is :mod:`batchrun.job.request`'s; the whole job is :class:`batchrun.job.schema.Job`).

Validates at the boundary, then freezes. It must not read the input data, touch the network or
read the API key (it only holds the name of the variable that holds it).
"""

from __future__ import annotations

import re
from datetime import date
from typing import Literal
from urllib.parse import SplitResult, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

from batchrun.apis.anthropic import LATEST_VERSION
from batchrun.job.messages import looks_like_key
from batchrun.job.templates import TemplatePart, columns_of, parse_template

__all__ = [
    "CacheConfig",
    "EndpointConfig",
    "InputConfig",
    "LimitsConfig",
    "OutputConfig",
    "RetryConfig",
    "Section",
    "TelemetryConfig",
    "TimeoutsConfig",
]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BETA = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class Section(BaseModel):
    """A section of the job file: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def checked_template(cls: type[BaseModel], value: str | None) -> str | None:
    """A ``prompt`` or ``system`` template, parsed when the job is read so that a bad one is an
    error naming its key (the input's, or a variant's)."""
    if value is not None:
        parse_template(value)
    return value


class InputConfig(Section):
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

    _template = field_validator("prompt", "system")(checked_template)

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


def _split_url(value: str) -> SplitResult:
    """A URL's parts; a port that is not a number in 0-65535 is a validation error."""
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("the port is not a number in 0-65535") from None
    return parts


class EndpointConfig(Section):
    """Where requests go and how they authenticate."""

    base_url: str = "sim"
    api_key_env: str = "ANTHROPIC_API_KEY"
    # The default for api: messages; a job with another API gets that API's default_version
    # (api: complete: 2023-06-01, its only one; batchrun.job.schema fills it in).
    anthropic_version: str = Field(default=LATEST_VERSION, pattern=r"^\d{4}-\d{2}-\d{2}$")
    # Sent as the anthropic-beta header, comma-joined.
    betas: tuple[str, ...] = Field(default=(), strict=False)

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

    @field_validator("betas")
    @classmethod
    def _beta_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for name in value:
            if not _BETA.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a beta name; give one name per item, letters, digits, "
                    "'-' and '.', e.g. betas: [context-1m-2025-08-07]"
                )
        return value

    @field_validator("anthropic_version", mode="before")
    @classmethod
    def _unquoted_date(cls, value: object) -> object:
        # YAML reads an unquoted 2023-06-01 as a date; accept it as the string it was meant to be.
        return value.isoformat() if isinstance(value, date) else value


class LimitsConfig(Section):
    """Concurrency and rate budgets; ``None`` means unlimited."""

    concurrency: int = Field(default=16, ge=1, le=10_000)
    requests_per_minute: int | None = Field(default=None, gt=0)
    input_tokens_per_minute: int | None = Field(default=None, gt=0)
    output_tokens_per_minute: int | None = Field(default=None, gt=0)
    # The *_per_minute limits apply to each model separately, as the API's do. Share each
    # model's budget with other batchrun runs on this host that use the same key, base URL and
    # model (state under state_dir, keyed by a hash of the three; never the key itself).
    shared: bool = True
    state_dir: str | None = None  # null: $XDG_STATE_HOME/batchrun or ~/.local/state/batchrun
    # With shared: share them with every host using this Redis instead (redis:// or rediss://).
    redis_url: str | None = None
    # Count input tokens exactly with /v1/messages/count_tokens instead of estimating them.
    exact_input_tokens: bool = False
    # Hard spend cap (USD) of the run folder, all sessions together: the run exits 4 rather
    # than start a request whose worst case would pass it (batchrun.schedule.spend).
    max_cost_usd: float | None = Field(default=None, gt=0)

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


class RetryConfig(Section):
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


class TimeoutsConfig(Section):
    """Seconds allowed to connect, to stay silent inside a stream, and for one attempt."""

    connect_s: float = Field(default=10.0, gt=0)
    idle_s: float = Field(default=60.0, gt=0)
    total_s: float = Field(default=600.0, gt=0)


class OutputConfig(Section):
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


class TelemetryConfig(Section):
    """Where spans go, and whether they may hold prompt and completion text."""

    traces: Literal["file", "otlp", "console", "none"] = "file"
    capture_content: bool = False


class CacheConfig(Section):
    """The response cache shared across run folders (:mod:`batchrun.record.response_cache`):
    ``off``, ``read`` (hits are used, nothing is stored) or ``read_write``."""

    mode: Literal["off", "read_write", "read"] = "off"
    dir: str | None = Field(default=None, min_length=1)  # null: $XDG_CACHE_HOME/batchrun

    @field_validator("mode", mode="before")
    @classmethod
    def _unquoted_off(cls, value: object) -> object:
        # YAML reads an unquoted `off` as false; accept it as the word it was meant to be.
        return "off" if value is False else value
