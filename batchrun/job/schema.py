"""The job file's schema: the whole :class:`Job`, as a frozen pydantic model, and
:func:`load_job`.

Validates at the boundary, then freezes: :func:`load_job` turns a YAML file and ``--set``
overrides into a frozen :class:`Job` or raises one :class:`~batchrun.errors.JobError` listing
every problem as ``FILE:LINE:COL: dotted.key: message`` (the reading is
:mod:`batchrun.job.reader`'s, the wording :mod:`batchrun.job.messages`'; the sections are
:mod:`batchrun.job.sections`'). It must not read the input data, touch the network or read the
API key (it only holds the name of the variable that holds it).
"""

from __future__ import annotations

import glob
import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import (
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from batchrun.apis import APIS
from batchrun.apis.anthropic import FIRST_VERSION, LATEST_VERSION
from batchrun.errors import JobError
from batchrun.job.catalogue import lookup, models
from batchrun.job.files import read_request_files
from batchrun.job.messages import model_in
from batchrun.job.prices import DEFAULT_PRICES, ModelPrice
from batchrun.job.reader import load_model
from batchrun.job.request import RequestConfig, sampling_set
from batchrun.job.scorers import Scorer, check_scorers
from batchrun.job.sections import (
    CacheConfig,
    EndpointConfig,
    InputConfig,
    LimitsConfig,
    OutputConfig,
    RetryConfig,
    Section,
    TelemetryConfig,
    TimeoutsConfig,
)
from batchrun.job.variants import DEFAULT, Variant, VariantConfig, resolve
from batchrun.shard.assign import Shard
from batchrun.sim.config import SimConfig

__all__ = ["Job", "load_job"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Values never echoed in messages (a Redis URL may hold a password).
_SECRET_KEYS = {"endpoint.api_key_env", "sim.api_key", "limits.redis_url"}


class Job(Section):
    """A validated, frozen job.

    ``path`` (the job file, absolute) and ``base_dir`` (its folder) are private attributes set by
    :func:`load_job`, so a job file cannot set them. A ``Job`` built in code has
    ``path = <cwd>/job.yaml`` until :meth:`with_path` says otherwise.
    """

    name: str = Field(description="the run's name, for its folder and traces, e.g. name: eval")
    input: InputConfig = Field(
        description='the rows to send, e.g. input: {path: data.csv, prompt: "{question}"}'
    )
    # endpoint comes before request: request's checks need the API version.
    endpoint: EndpointConfig = EndpointConfig()
    request: RequestConfig = Field(
        description="what to ask, e.g. request: {model: claude-sonnet-5-5, max_tokens: 256}"
    )
    # Several requests per row, compared (batchrun.job.variants); none: one, named default.
    variants: tuple[VariantConfig, ...] = Field(default=(), strict=False)
    limits: LimitsConfig = LimitsConfig()
    retry: RetryConfig = RetryConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    output: OutputConfig = OutputConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    cache: CacheConfig = CacheConfig()
    sim: SimConfig = SimConfig()
    # The price table for the cost estimate: entries here override or extend DEFAULT_PRICES.
    prices: dict[str, ModelPrice] = Field(default_factory=lambda: dict(DEFAULT_PRICES))
    # How completions are scored into scores.parquet (batchrun.job.scorers, batchrun.score).
    scorers: tuple[Scorer, ...] = Field(default=(), strict=False)

    _path: Path = PrivateAttr(default_factory=lambda: Path.cwd() / "job.yaml")
    _shard: Shard | None = PrivateAttr(default=None)  # --shard K/N: see batchrun.shard
    _variants: tuple[Variant, ...] = PrivateAttr(default=())

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # `limits:` with every key commented out reads as null: it means "all defaults".
        if not isinstance(data, dict):
            return data
        sections = [k for k, f in cls.model_fields.items() if model_in(f.annotation)]
        data = {k: ({} if k in sections and v is None else v) for k, v in data.items()}
        # A job naming no version gets its API's default (api: complete: 2023-06-01).
        request, endpoint = data.get("request"), data.get("endpoint", {})
        name = request.get("api", "messages") if isinstance(request, dict) else None
        api = APIS.get(name) if isinstance(name, str) else None
        if api is not None and isinstance(endpoint, dict) and "anthropic_version" not in endpoint:
            data["endpoint"] = {**endpoint, "anthropic_version": api.default_version}
        return data

    @field_validator("request")
    @classmethod
    def _fits_version(cls, request: RequestConfig, info: ValidationInfo) -> RequestConfig:
        endpoint = info.data.get("endpoint")
        if endpoint is not None:
            _version_rules(request, endpoint)
        return request

    @field_validator("prices", mode="before")
    @classmethod
    def _no_prices(cls, value: Any) -> Any:
        return {} if value is None else value  # `prices:` with nothing under it: the defaults

    @field_validator("scorers", mode="before")
    @classmethod
    def _no_scorers(cls, value: Any) -> Any:
        return () if value is None else value  # `scorers:` with nothing under it

    @field_validator("scorers")
    @classmethod
    def _scorers_fit(cls, value: tuple[Scorer, ...], info: ValidationInfo) -> tuple[Scorer, ...]:
        if (request := info.data.get("request")) is not None:
            check_scorers(value, request)
        return value

    @field_validator("prices")
    @classmethod
    def _over_defaults(cls, value: dict[str, ModelPrice]) -> dict[str, ModelPrice]:
        if any(not name.strip() for name in value):
            raise ValueError("a model name must not be empty, e.g. claude-sonnet-4-5: {...}")
        return {**DEFAULT_PRICES, **value}

    @model_validator(mode="after")
    def _variants_fit(self) -> Job:
        endpoint = self.endpoint
        self._variants = resolve(
            self.variants, self.request, self.input, lambda r: _version_rules(r, endpoint)
        )
        return self

    @model_validator(mode="after")
    def _priced_under_cap(self) -> Job:
        if self.limits.max_cost_usd is None:
            return self
        from batchrun.record.cost import rates_for  # record imports job (and polars): not at import

        for variant in self.effective_variants:
            model = variant.request.model
            if rates_for(model, self.prices) is None:
                key = "request.model" if variant.index is None else f"{variant.shown} model"
                raise ValueError(
                    f"limits.max_cost_usd is set, but {key} {model} has no price, so no "
                    f"request could be counted against the cap; give its price under prices: "
                    f"({model}: {{input: ..., output: ...}}, USD per million tokens), or remove "
                    "limits.max_cost_usd"
                )
        return self

    @property
    def effective_variants(self) -> tuple[Variant, ...]:
        """The variants every input row runs under, each with its whole request and input,
        in the order a row's requests go out (by name); without ``variants``, one: default."""
        if not self.variants or not self._variants:  # made from this job's fields, always
            return (Variant(DEFAULT, self.request, self.input),)
        return self._variants

    def variant(self, name: str) -> Variant:
        """The variant called ``name`` (KeyError when the job has none by that name)."""
        for variant in self.effective_variants:
            if variant.name == name:
                return variant
        raise KeyError(name)

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
    def warnings(self) -> tuple[str, ...]:
        """What is valid but worth saying before a run: a model the catalogue does not know
        (new models appear: it is sent as given), one that is deprecated; per variant."""
        found: list[str] = []
        for variant in self.effective_variants:
            model = variant.request.model
            key = "request.model" if variant.index is None else f"{variant.shown}: model"
            info = lookup(model)
            if info is None:
                known = ", ".join(i.id for i in models() if i.status == "active")
                found.append(
                    f"{key}: {model} is not in batchrun's model catalogue; it is sent as "
                    "given, with no output limit checked (give its price under prices: for the "
                    f"cost); current models: {known}"
                )
            elif info.status == "deprecated":
                found.append(
                    f"{key}: {model} is deprecated and retires on {info.retired_on}; "
                    f"move to model: {info.successor}"
                )
        return tuple(dict.fromkeys(found))

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

    @property
    def shard(self) -> Shard | None:
        """The shard of the job this run is (``--shard K/N``), or None for the whole job."""
        return self._shard

    def with_shard(self, shard: Shard | None) -> Job:
        """A copy of this job that runs only ``shard``'s requests, in its own folder."""
        job = self.model_copy()
        job._shard = shard
        return job

    def run_dir(self, now: datetime) -> Path:
        """The run folder: ``output.dir`` with ``{name}`` and ``{date}`` (UTC) filled in; a
        shard's is ``shard-K-of-N`` inside it."""
        if now.tzinfo is None:
            raise ValueError("run_dir needs an aware datetime")
        day = now.astimezone(UTC).strftime("%Y-%m-%d")
        out = self.base_dir / Path(self.output.dir.format(name=self.name, date=day)).expanduser()
        return out if self._shard is None else out / self._shard.folder

    def input_paths(self) -> list[Path]:
        """The input files, sorted; ``input.path`` may be a glob. None found is a JobError.

        A file that exists under the literal name wins over reading it as a glob, so that
        ``data[1].csv`` names that file rather than a pattern that cannot match it.
        """
        pattern = str(Path(self.input.path).expanduser())
        fix = f"relative paths start at the job file's folder, {self.base_dir}; fix input.path"
        literal = self.base_dir / pattern
        if literal.is_file():
            return [literal]
        if not glob.has_magic(pattern):
            path = literal
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


def _version_rules(request: RequestConfig, endpoint: EndpointConfig) -> None:
    """The API version's rules for a request (the job's, and each variant's); ValueError."""
    version, api = endpoint.anthropic_version, request.api_spec
    if api.versions is not None and version not in api.versions:
        only = ", ".join(sorted(api.versions))
        raise ValueError(
            f"api: {api.name} speaks anthropic_version {only} only (got "
            f"endpoint.anthropic_version: {version!r}); set endpoint.anthropic_version: "
            f'"{only}", or remove it'
        )
    sampling = sampling_set(request)
    if sampling and version >= LATEST_VERSION:
        raise ValueError(
            f"sets {', '.join(sampling)}, but anthropic_version {version} has no temperature, "
            "top_p or top_k (the API answers 400 even at their defaults); remove them from "
            "request, or pin endpoint.anthropic_version: "
            f'"{FIRST_VERSION}" with a model that takes them (e.g. claude-haiku-4-5)'
        )
    model = lookup(request.model)
    non_default = sampling_set(request, non_default=True)
    if model is not None and not model.sampling and non_default:
        raise ValueError(
            f"sets {', '.join(non_default)}, but {request.model} refuses sampling values "
            "other than the defaults on every API version (the API answers 400); remove "
            "them from request, or use a model that takes them (e.g. claude-haiku-4-5)"
        )


def load_job(path: str | Path, overrides: Sequence[str] = ()) -> Job:
    """Read, override and validate a job file; every problem found is in one JobError.

    ``overrides`` are ``KEY=VALUE`` strings (``--set``): a dotted key of the schema and a YAML
    value, applied in order after the file is read.
    """
    job = load_model(path, Job, overrides, secret_keys=_SECRET_KEYS).with_path(path)
    if not any(v.request.files() for v in job.effective_variants) and not job.request.files():
        return job
    request = _with_files(job.request, job.base_dir, str(path), "request")
    variants = tuple(
        replace(v, request=_with_files(v.request, job.base_dir, str(path), v.shown))
        for v in job.effective_variants
    )
    job = job.model_copy(update={"request": request})
    job._variants = variants
    return job


def _with_files(request: RequestConfig, base_dir: Path, shown: str, where: str) -> RequestConfig:
    """``request`` with the keys it gives as paths read (``where`` names it in messages)."""
    if not request.files():
        return request
    data = read_request_files(request, base_dir, shown=shown)
    try:
        return RequestConfig.model_validate({**request.model_dump(), **data})
    except ValidationError as exc:
        read = ", ".join(f"{key}: {name}" for key, name in request.files().items())
        lines = []
        for err in exc.errors(include_url=False):
            key = ".".join(map(str, ("request", *err["loc"])))
            message = err["msg"].removeprefix("Value error, ")
            of = "" if where == "request" else f"{where}: "
            lines.append(f"{shown}: {of}{key}: {message} ({read})")
        raise JobError("\n".join(lines)) from None
