"""Today's request keys: what each puts on the wire, what the job refuses when it is read, and
the API versions (thinking, effort, output_format, tools, prompt_cache, metadata, service_tier,
extra, endpoint.betas, endpoint.anthropic_version)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from batchrun.apis import build_request
from batchrun.batch.entries import make_entry
from batchrun.errors import JobError
from batchrun.job.schema import Job, load_job
from batchrun.models import RequestItem
from batchrun.run import run_job
from batchrun.sim import SimServer
from tests.conftest import JobWriter, no_sleep, run_cli

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}
TOOL = {
    "name": "lookup",
    "description": "Look a fact up.",
    "input_schema": {"type": "object", "properties": {"q": {"type": "string"}}},
}
# Every new key at once, as a user would write them.
FEATURES: dict[str, Any] = {
    "request": {
        "model": "claude-sonnet-5-5",
        "max_tokens": 2048,
        "thinking": {"type": "adaptive", "display": "summarized"},
        "effort": "low",
        "output_format": SCHEMA,
        "tools": [TOOL],
        "tool_choice": {"type": "auto"},
        "prompt_cache": "1h",
        "metadata": {"user_id": "eval-7"},
        "service_tier": "auto",
        "extra": {"inference_geo": "us"},
    },
    "endpoint": {"betas": ["context-1m-2025-08-07", "files-api-2025-04-14"]},
}


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")


class Recorder(httpx.AsyncBaseTransport):
    """A real transport to the simulator that keeps each request's headers and JSON body."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[tuple[httpx.Headers, dict[str, Any]]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        self.sent.append((request.headers, json.loads(request.content)))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _sent(job: Job) -> tuple[httpx.Headers, dict[str, Any]]:
    """The headers and body of the one request a one-row job sends to the simulator."""
    recorder = Recorder()
    await run_job(job, sleep=no_sleep, transport=recorder)
    (sent,) = recorder.sent
    return sent


def _job(write_job: JobWriter, server: SimServer, extra: dict[str, Any]) -> Job:
    extra = {**extra, "endpoint": {**extra.get("endpoint", {}), "base_url": server.base_url}}
    return load_job(write_job(rows=1, extra=extra))


# --- on the wire -------------------------------------------------------------------------------


async def test_every_new_key_is_in_the_body_and_the_headers(
    write_job: JobWriter, sim_server: Any
) -> None:
    """The body holds each key as the API names it; betas go in one anthropic-beta header; the
    version is 2026-10-21 by default."""
    headers, body = await _sent(_job(write_job, sim_server(), FEATURES))
    assert body == {
        "model": "claude-sonnet-5-5",
        "max_tokens": 2048,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "thinking": {"type": "adaptive", "display": "summarized"},
        "tools": [TOOL],
        "tool_choice": {"type": "auto"},
        "metadata": {"user_id": "eval-7"},
        "service_tier": "auto",
        "output_config": {"effort": "low", "format": {"type": "json_schema", "schema": SCHEMA}},
        "cache_control": {"type": "ephemeral", "ttl": "1h"},
        "inference_geo": "us",
        "stream": True,
    }
    assert headers["anthropic-version"] == "2026-10-21"
    assert headers["anthropic-beta"] == "context-1m-2025-08-07,files-api-2025-04-14"


async def test_five_minute_cache_and_unset_keys(write_job: JobWriter, sim_server: Any) -> None:
    """prompt_cache 5m is a bare ephemeral cache_control; keys left unset are not sent, and no
    anthropic-beta header goes without betas."""
    job = _job(write_job, sim_server(), {"request": {"prompt_cache": "5m"}})
    headers, body = await _sent(job)
    assert body["cache_control"] == {"type": "ephemeral"}
    assert set(body) == {"model", "max_tokens", "messages", "cache_control", "stream"}
    assert "anthropic-beta" not in headers


async def test_prompt_cache_marks_the_system_prompt_too(
    write_job: JobWriter, sim_server: Any
) -> None:
    """With a system prompt, prompt_cache puts a breakpoint on it too (the TTL the job asks
    for): automatic caching alone writes each row's whole prompt, which no other row shares.
    Without prompt_cache the system prompt goes as the plain string."""
    extra = {"input": {"system": "Be brief."}, "request": {"prompt_cache": "1h"}}
    _, body = await _sent(_job(write_job, sim_server(), extra))
    marker = {"type": "ephemeral", "ttl": "1h"}
    assert body["cache_control"] == marker
    assert body["system"] == [{"type": "text", "text": "Be brief.", "cache_control": marker}]
    plain = {"input": {"system": "Be brief."}, "output": {"dir": "plain"}}
    _, body = await _sent(_job(write_job, sim_server(), plain))
    assert body["system"] == "Be brief."
    assert "cache_control" not in body


async def test_the_legacy_api_keeps_2023_06_01(write_job: JobWriter, sim_server: Any) -> None:
    """api: complete sends anthropic-version 2023-06-01 without being told, and its metadata."""
    request = {"api": "complete", "model": "claude-haiku-4-5", "metadata": {"user_id": "u"}}
    job = _job(write_job, sim_server(), {"request": request})
    assert job.endpoint.anthropic_version == "2023-06-01"
    headers, body = await _sent(job)
    assert headers["anthropic-version"] == "2023-06-01"
    assert body["metadata"] == {"user_id": "u"}


async def test_sampling_on_the_old_version_with_a_model_that_takes_it(
    write_job: JobWriter, sim_server: Any
) -> None:
    """Pinned to 2023-06-01, a model that accepts sampling gets temperature and top_k."""
    extra = {
        "request": {"model": "claude-haiku-4-5", "temperature": 0.2, "top_k": 5},
        "endpoint": {"anthropic_version": "2023-06-01"},
    }
    headers, body = await _sent(_job(write_job, sim_server(), extra))
    assert headers["anthropic-version"] == "2023-06-01"
    assert (body["temperature"], body["top_k"]) == (0.2, 5)


def test_schema_and_tools_from_files(write_job: JobWriter, tmp_path: Path) -> None:
    """output_format names a .json schema and tools a YAML list, relative to the job file;
    the body holds what they contain."""
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "answer.json").write_text(json.dumps(SCHEMA), encoding="utf-8")
    (tmp_path / "tools.yaml").write_text(
        "- name: lookup\n  description: Look a fact up.\n"
        "  input_schema: {type: object, properties: {q: {type: string}}}\n",
        encoding="utf-8",
    )
    request = {
        "output_format": "schemas/answer.json",
        "tools": "tools.yaml",
        "tool_choice": {"type": "tool", "name": "lookup"},
    }
    job = load_job(write_job(rows=1, extra={"request": request}))
    body = job.request.api_spec.body(_item(), job.request.params)
    assert body["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
    assert body["tools"] == [TOOL]


def test_batch_bodies_carry_the_new_keys(write_job: JobWriter) -> None:
    """A Message Batches entry's params are the streaming body without stream."""
    job = load_job(write_job(rows=1, extra={**FEATURES, "request": {**FEATURES["request"]}}))
    _, wire = make_entry(job, _item(), "salt")
    params = json.loads(wire)["params"]
    body, _ = build_request(job.request.api_spec, _item(), job.request.params)
    body.pop("stream")
    assert params == body
    assert params["output_config"]["effort"] == "low"
    assert params["cache_control"] == {"type": "ephemeral", "ttl": "1h"}


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("thinking", {"type": "disabled"}),
        ("effort", "high"),
        ("output_format", {"type": "object"}),
        ("tools", [{"name": "other", "input_schema": {"type": "object"}}]),
        ("tool_choice", {"type": "none"}),
        ("prompt_cache", "5m"),
        ("metadata", {"user_id": "someone-else"}),
        ("service_tier", "standard_only"),
        ("extra", {"inference_geo": "eu"}),
    ],
)
def test_each_key_changes_the_request_hash(write_job: JobWriter, key: str, value: Any) -> None:
    """Changing any new key changes request_hash, so a resumed run notices."""
    before = load_job(write_job(rows=1, extra=FEATURES))
    changed = {**FEATURES, "request": {**FEATURES["request"], key: value}}
    after = load_job(write_job(rows=1, extra=changed))
    hashes = [
        build_request(j.request.api_spec, _item(), j.request.params)[1] for j in (before, after)
    ]
    assert hashes[0] != hashes[1]


def test_betas_change_the_request_hash_and_none_keeps_the_old_one(write_job: JobWriter) -> None:
    """endpoint.betas is a header, not the body, yet it changes what the API does: it is in the
    hash. With none, the hash is the one folders written before betas existed hold."""
    job = load_job(write_job(rows=1, extra=FEATURES))
    api, params = job.request.api_spec, job.request.params
    body, plain = build_request(api, _item(), params)
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert plain == hashlib.sha256(f"{api.path}\n{canonical}".encode()).hexdigest()
    assert build_request(api, _item(), params, ())[1] == plain
    assert build_request(api, _item(), params, ("a-2026-01-01",))[1] != plain


def test_a_resumed_run_notices_new_betas(write_job: JobWriter, sim_server: Any) -> None:
    """A folder finished without betas, run again with one: refused (exit 2), nothing sent."""
    server = sim_server()
    job = write_job(rows=2, extra={"endpoint": {"base_url": server.base_url}})
    assert run_cli(job).returncode == 0
    sent = server.stats.total_requests
    again = run_cli(job, "--set", "endpoint.betas=[context-1m-2025-08-07]")
    assert again.returncode == 2, again.stderr
    assert "request" in again.stderr
    assert server.stats.total_requests == sent


async def test_an_api_field_in_extra_reaches_the_simulator(
    write_job: JobWriter, sim_server: Any
) -> None:
    """request.extra's fields go into the body as they are, and the simulator takes the API's
    fields batchrun has no key for (docs/api.md's example: inference_geo)."""
    job = _job(write_job, sim_server(), {"request": {"extra": {"inference_geo": "us"}}})
    recorder = Recorder()
    outcome = await run_job(job, sleep=no_sleep, transport=recorder)
    ((_, body),) = recorder.sent
    assert body["inference_geo"] == "us"
    results = pl.read_parquet(outcome.run_dir / "results.parquet")
    assert results["status"].to_list() == ["ok"]


def _item() -> RequestItem:
    return RequestItem(
        id="r0", sample=0, messages=({"role": "user", "content": "What is the capital of France?"},)
    )


# --- refused when read: exit 2, nothing sent ---------------------------------------------------

REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    (
        "retired-model",
        {"request": {"model": "claude-sonnet-4-5"}},
        "request.model: claude-sonnet-4-5 was retired on 2026-11-30 (the API answers 404 "
        "not_found_error); use its successor: model: claude-sonnet-5-5",
    ),
    (
        "retired-snapshot",
        {"request": {"model": "claude-3-7-sonnet-20250219"}},
        "retired on 2026-02-19",
    ),
    (
        "max-tokens-over-the-model-limit",
        {"request": {"model": "claude-haiku-4-5", "max_tokens": 100000}},
        "request.max_tokens: 100000 is over claude-haiku-4-5-20251001's output limit of 64000 "
        "tokens; e.g. max_tokens: 64000",
    ),
    (
        "sampling-on-2026-10-21",
        {"request": {"temperature": 1.0, "top_p": 0.9}},
        "request: sets temperature: 1, top_p: 0.9, but anthropic_version 2026-10-21 has no "
        "temperature, top_p or top_k (the API answers 400 even at their defaults); remove them "
        'from request, or pin endpoint.anthropic_version: "2023-06-01" with a model that '
        "takes them (e.g. claude-haiku-4-5)",
    ),
    (
        "sampling-refused-by-the-model",
        {"request": {"top_k": 10}, "endpoint": {"anthropic_version": "2023-06-01"}},
        "request: sets top_k: 10, but claude-sonnet-5-5 refuses sampling values other than the "
        "defaults on every API version",
    ),
    (
        "manual-thinking-on-an-adaptive-model",
        {"request": {"thinking": {"type": "enabled", "budget_tokens": 2048}, "max_tokens": 4096}},
        "request.thinking: claude-sonnet-5-5 takes adaptive thinking only ({type: enabled} "
        "answers 400): use thinking: {type: adaptive} and set the depth with request.effort",
    ),
    (
        "thinking-budget-not-below-max-tokens",
        {
            "request": {
                "model": "claude-haiku-4-5",
                "max_tokens": 2048,
                "thinking": {"type": "enabled", "budget_tokens": 2048},
            }
        },
        "request.thinking: budget_tokens (2048) must be less than max_tokens (2048)",
    ),
    (
        "thinking-off-on-an-always-thinking-model",
        {"request": {"model": "claude-opus-5-5", "thinking": {"type": "disabled"}}},
        "request.thinking: claude-opus-5-5 always thinks",
    ),
    (
        "effort-unknown",
        {"request": {"effort": "extreme"}},
        "request.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'",
    ),
    (
        "output-format-wrapped",
        {"request": {"output_format": {"type": "json_schema", "schema": SCHEMA}}},
        "request.output_format: give the JSON schema itself",
    ),
    (
        "output-format-file-missing",
        {"request": {"output_format": "nope.json"}},
        "request.output_format: no such file: nope.json",
    ),
    (
        "tool-choice-names-no-tool",
        {"request": {"tools": [TOOL], "tool_choice": {"type": "tool", "name": "lokup"}}},
        "tool_choice names 'lokup', which is not a tool; did you mean 'lookup'?",
    ),
    (
        "tool-choice-without-tools",
        {"request": {"tool_choice": {"type": "any"}}},
        "tool_choice: {type: any} needs request.tools",
    ),
    (
        "forced-tool-while-thinking",
        {
            "request": {
                "tools": [TOOL],
                "tool_choice": {"type": "any"},
                "thinking": {"type": "adaptive"},
            }
        },
        "tool_choice: {type: any} forces a tool call, which the API refuses while thinking",
    ),
    ("prompt-cache-ttl", {"request": {"prompt_cache": "10m"}}, "request.prompt_cache"),
    (
        "metadata-unknown-key",
        {"request": {"metadata": {"user": "x"}}},
        "request.metadata: the API takes only user_id here (got user)",
    ),
    (
        "extra-collides",
        {"request": {"extra": {"output_config": {"effort": "max"}}}},
        "extra.output_config collides with request.effort and request.output_format",
    ),
    (
        "legacy-api-with-a-messages-key",
        {"request": {"api": "complete", "model": "claude-haiku-4-5", "effort": "low"}},
        "api: complete does not take effort; use api: messages, or remove it",
    ),
    (
        "legacy-api-on-2026-10-21",
        {
            "request": {"api": "complete", "model": "claude-haiku-4-5"},
            "endpoint": {"anthropic_version": "2026-10-21"},
        },
        "api: complete speaks anthropic_version 2023-06-01 only",
    ),
    (
        "beta-list-in-one-string",
        {"endpoint": {"betas": ["a-1,b-2"]}},
        "endpoint.betas: 'a-1,b-2' is not a beta name",
    ),
]


@pytest.mark.parametrize(
    ("extra", "expected"), [case[1:] for case in REFUSALS], ids=[case[0] for case in REFUSALS]
)
def test_refused_when_read(
    write_job: JobWriter, sim_server: Any, extra: dict[str, Any], expected: str
) -> None:
    """The job exits 2 naming the key, what was given and the way out; nothing is sent."""
    server = sim_server()
    endpoint = {**extra.get("endpoint", {}), "base_url": server.base_url}
    result = run_cli(write_job(rows=1, extra={**extra, "endpoint": endpoint}))
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert server.stats.total_requests == 0


def test_a_job_must_name_its_model(tmp_path: Path) -> None:
    """request.model has no default: a job without one is refused, with an example."""
    (tmp_path / "job.yaml").write_text(
        "name: j\ninput: {path: d.csv, prompt: '{q}'}\nrequest:\n  max_tokens: 8\n",
        encoding="utf-8",
    )
    with pytest.raises(JobError) as info:
        load_job(tmp_path / "job.yaml")
    assert str(info.value).endswith(
        "job.yaml:3:1: request.model: required key is missing "
        "(the model to ask, e.g. model: claude-sonnet-5-5)"
    )


# --- warned, not refused ---------------------------------------------------------------------


def test_an_unknown_model_is_a_warning(write_job: JobWriter) -> None:
    """A model the catalogue does not know loads (new models appear), with a warning."""
    job = load_job(write_job(rows=1, extra={"request": {"model": "claude-sonnet-6"}}))
    (warning,) = job.warnings
    assert warning.startswith(
        "request.model: claude-sonnet-6 is not in batchrun's model catalogue; it is sent as given"
    )
    assert "claude-sonnet-5-5" in warning


def test_a_deprecated_model_is_a_warning(write_job: JobWriter) -> None:
    """A deprecated model loads, with its retirement date and successor in a warning."""
    job = load_job(write_job(rows=1, extra={"request": {"model": "claude-opus-4-5"}}))
    assert job.warnings == (
        "request.model: claude-opus-4-5 is deprecated and retires on 2027-01-22; "
        "move to model: claude-opus-5-5",
    )


def test_the_warning_reaches_the_terminal(write_job: JobWriter) -> None:
    """The command line prints a load-time warning on stderr and goes on."""
    job = write_job(rows=1, extra={"request": {"model": "claude-sonnet-6"}})
    done = subprocess.run(
        [sys.executable, "-m", "batchrun.cli", "validate", str(job)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (
        "batchrun: warning: request.model: claude-sonnet-6 is not in batchrun's model catalogue"
        in done.stderr
    )


def test_a_current_model_has_no_warning(write_job: JobWriter) -> None:
    """The example job's model is current: nothing to warn about."""
    assert load_job(write_job(rows=1)).warnings == ()


def test_the_example_job_names_a_current_model() -> None:
    """jobs/eval.yaml loads and asks a current model."""
    job = load_job(Path(__file__).resolve().parents[1] / "jobs" / "eval.yaml")
    assert job.request.model == "claude-sonnet-5-5"
    assert job.warnings == ()


def test_derive_replaces_keys_and_validates_again() -> None:
    from pydantic import ValidationError

    from batchrun.job.request import RequestConfig

    base = RequestConfig.model_validate(
        {"model": "claude-sonnet-5-5", "max_tokens": 300, "effort": "high"}
    )
    cheap = base.derive({"model": "claude-haiku-5-5", "effort": "low"})
    assert cheap.params == {"model": "claude-haiku-5-5", "max_tokens": 300, "effort": "low"}
    assert base.params["model"] == "claude-sonnet-5-5"  # the base is unchanged
    with pytest.raises(ValidationError, match="max_tokens"):
        base.derive({"max_tokens": 0})
