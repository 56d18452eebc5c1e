"""Variants: every input row and sample under every variant, keyed (variant, id, sample), through
the simulator; adding, changing and re-running a variant in a run folder; batch mode; spans."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from batchrun.batch.entries import Entry, custom_id
from batchrun.cli import main
from batchrun.errors import JobError
from batchrun.job.schema import Job, load_job
from batchrun.models import RunOutcome
from batchrun.preflight import predict
from batchrun.run import run_job
from batchrun.sim import SimServer
from batchrun.telemetry.setup import setup_telemetry
from tests.conftest import JobWriter, no_sleep

StartSim = Callable[..., SimServer]

TWO = [
    {"name": "sonnet", "request": {"model": "claude-sonnet-5-5"}},
    {"name": "haiku", "request": {"model": "claude-haiku-5-5"}, "input": {"system": "Be terse."}},
]


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")


class Recorder(httpx.AsyncBaseTransport):
    """A real transport to the simulator that keeps each Messages request's JSON body, in the
    order sent."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[dict[str, Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        if request.url.path == "/v1/messages":
            self.sent.append(json.loads(request.content))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _job(
    write_job: JobWriter,
    server: SimServer,
    variants: list[dict[str, Any]] | None = None,
    rows: int = 3,
    **extra: Any,
) -> Path:
    base: dict[str, Any] = {"endpoint": {"base_url": server.base_url}, **extra}
    if variants is not None:
        base["variants"] = variants
    return write_job(rows=rows, extra=base)


def _table(outcome: RunOutcome, name: str = "results") -> pl.DataFrame:
    return pl.read_parquet(outcome.run_dir / f"{name}.parquet")


# --- rows and keys ---------------------------------------------------------------------------


async def test_every_row_and_sample_runs_under_every_variant(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """Each (row, sample) has one row per variant, with that variant's model and system; the
    key (variant, id, sample) is unique; results are ordered by input_row, variant, sample;
    attempts carry the variant."""
    server = sim_server()
    path = _job(write_job, server, TWO, request={"samples": 2})
    recorder = Recorder()
    outcome = await run_job(load_job(path), sleep=no_sleep, transport=recorder)
    assert outcome.exit_code == 0
    results = _table(outcome)
    assert results.height == 3 * 2 * 2
    assert results.select("variant", "id", "sample").is_unique().all()
    assert results.select("input_row", "variant", "sample").rows() == [
        (row, variant, sample)
        for row in range(3)
        for variant in ("haiku", "sonnet")
        for sample in range(2)
    ]
    models = dict(results.group_by("variant").agg(pl.col("model").unique()).iter_rows())
    assert models == {"haiku": ["claude-haiku-5-5"], "sonnet": ["claude-sonnet-5-5"]}
    systems = {(b["model"], b.get("system")) for b in recorder.sent}
    assert systems == {("claude-haiku-5-5", "Be terse."), ("claude-sonnet-5-5", None)}
    attempts = _table(outcome, "attempts")
    assert sorted(attempts["variant"].unique()) == ["haiku", "sonnet"]
    assert (results["cost_usd"].filter(results["variant"] == "haiku") > 0).all()


async def test_requests_go_out_row_major(write_job: JobWriter, sim_server: StartSim) -> None:
    """The simulator receives, for each input row, every variant's requests before the next
    row's: (row, variant by name, sample), the order of results.parquet."""
    server = sim_server()
    path = _job(
        write_job,
        server,
        TWO,
        rows=4,
        request={"samples": 2},
        limits={"concurrency": 1},
        input={"prompt": "{id}"},
    )
    recorder = Recorder()
    await run_job(load_job(path), sleep=no_sleep, transport=recorder)
    received = [(b["messages"][0]["content"], b["model"]) for b in recorder.sent]
    haiku, sonnet = "claude-haiku-5-5", "claude-sonnet-5-5"
    assert received == [(f"r{row}", m) for row in range(4) for m in (haiku, sonnet) for _ in (0, 1)]


# --- changing the job in a run folder --------------------------------------------------------


async def test_adding_a_variant_runs_only_it(write_job: JobWriter, sim_server: StartSim) -> None:
    """A folder run with one variant, run again with a second, sends only the second's."""
    server = sim_server()
    first = await run_job(load_job(_job(write_job, server, TWO[:1])), sleep=no_sleep)
    assert first.sent == 3
    recorder = Recorder()
    again = await run_job(load_job(_job(write_job, server, TWO)), transport=recorder)
    assert again.sent == 3
    assert {b["model"] for b in recorder.sent} == {"claude-haiku-5-5"}
    assert _table(again).group_by("variant").len().sort("variant").rows() == [
        ("haiku", 3),
        ("sonnet", 3),
    ]


async def test_a_changed_variant_is_refused_by_name(
    write_job: JobWriter, sim_server: StartSim, capsys: pytest.CaptureFixture[str]
) -> None:
    """A variant whose requests changed is named in the refusal, with the three ways on; the
    run and validate refuse alike (exit 2)."""
    server = sim_server()
    await run_job(load_job(_job(write_job, server, TWO)), sleep=no_sleep)
    changed = [TWO[0], {**TWO[1], "request": {"model": "claude-haiku-5-5", "max_tokens": 32}}]
    path = _job(write_job, server, changed)
    with pytest.raises(JobError) as info:
        await run_job(load_job(path))
    message = str(info.value)
    assert "3 request(s) would now be sent differently" in message
    assert "in variants[1] (haiku): 3;" in message
    assert "sonnet" not in message
    for way in ("--rerun-changed", "--fresh", "output.dir"):
        assert way in message
    assert await asyncio.to_thread(main, ["validate", str(path)]) == 2
    assert "variants[1] (haiku): 3" in capsys.readouterr().err


async def test_rerun_changed_replaces_the_rows_and_keeps_attempts(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """--rerun-changed sends just the changed variant's requests again (validate predicts it):
    their rows are replaced, the other variant's rows stay, and the earlier attempts stay in
    attempts.parquet."""
    server = sim_server()
    first = await run_job(load_job(_job(write_job, server, TWO)), sleep=no_sleep)
    before = _table(first)
    changed = [TWO[0], {**TWO[1], "request": {"model": "claude-opus-5-5"}}]
    job = load_job(_job(write_job, server, changed))
    seen = await predict(job, rerun_changed=True)
    assert (seen.to_send, seen.again, seen.changed) == (3, 3, {"haiku": 3})
    outcome = await run_job(job, rerun_changed=True, sleep=no_sleep)
    assert outcome.sent == 3
    after = _table(outcome)
    assert after.height == 6
    haiku = after.filter(pl.col("variant") == "haiku")
    assert set(haiku["model"]) == {"claude-opus-5-5"}
    assert set(haiku["run_id"]) == {outcome.run_id}
    sonnet = after.filter(pl.col("variant") == "sonnet").sort("id")
    assert (
        sonnet["run_id"].to_list()
        == before.filter(pl.col("variant") == "sonnet").sort("id")["run_id"].to_list()
    )
    attempts = _table(outcome, "attempts").filter(pl.col("variant") == "haiku")
    assert set(attempts["run_id"]) == {first.run_id, outcome.run_id}
    assert (await run_job(job, sleep=no_sleep)).sent == 0  # the folder is this job's now


async def test_a_folder_from_before_variants_resumes_as_default(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """Results and attempts written without the variant column resume as variant default:
    nothing is sent again, and the new rows and the old read as default."""
    server = sim_server()
    first = await run_job(load_job(_job(write_job, server, rows=2)), sleep=no_sleep)
    for name in ("results", "attempts"):
        path = first.run_dir / f"{name}.parquet"
        pl.read_parquet(path).drop("variant").write_parquet(path)
    assert "variant" not in pl.read_parquet_schema(first.run_dir / "results.parquet")
    outcome = await run_job(load_job(_job(write_job, server, rows=4)), sleep=no_sleep)
    assert outcome.sent == 2
    results = _table(outcome)
    assert results.select("variant", "id").rows() == [("default", f"r{i}") for i in range(4)]
    assert set(_table(outcome, "attempts")["variant"]) == {"default"}


# --- batch mode, traces, validate --------------------------------------------------------------


async def test_batch_mode_keys_each_variant(write_job: JobWriter, sim_server: StartSim) -> None:
    """In batch mode, two variants' requests go out under distinct custom ids the API accepts,
    and come back as rows keyed by variant, each with its variant's model."""
    server = sim_server()
    path = _job(write_job, server, TWO, request={"mode": "batch"})
    outcome = await run_job(load_job(path), sleep=no_sleep)
    assert outcome.exit_code == 0
    results = _table(outcome)
    assert results.select("variant", "id").sort("variant", "id").rows() == [
        (v, f"r{i}") for v in ("haiku", "sonnet") for i in range(3)
    ]
    assert set(zip(results["variant"], results["model"], strict=True)) == {
        ("haiku", "claude-haiku-5-5"),
        ("sonnet", "claude-sonnet-5-5"),
    }
    index = [
        json.loads(line)
        for f in sorted((outcome.run_dir / "batch").glob("index-*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    ids = [e["custom_id"] for e in index]
    assert len(ids) == len(set(ids)) == 6
    assert all(re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", i) for i in ids)
    assert {e["variant"] for e in index} == {"haiku", "sonnet"}


def test_custom_ids_differ_by_variant_and_keep_the_default() -> None:
    """The default variant keeps the ids of folders from before variants; another variant's id
    differs and names it."""
    assert custom_id("salt", "r1", 0) == custom_id("salt", "r1", 0, "default")
    other = custom_id("salt", "r1", 0, "haiku.low")
    assert other != custom_id("salt", "r1", 0)
    assert other.startswith("haiku_low-r1-0-")


async def test_spans_carry_the_variant(write_job: JobWriter, sim_server: StartSim) -> None:
    """Each request's span has batchrun.variant, and its model is the variant's."""
    server = sim_server()
    spans = InMemorySpanExporter()
    telemetry = setup_telemetry(
        "none",
        job_name="t",
        run_dir=Path(),
        span_exporter=spans,
        metric_reader=InMemoryMetricReader(),
    )
    try:
        await run_job(
            load_job(_job(write_job, server, TWO, rows=1)), sleep=no_sleep, telemetry=telemetry
        )
    finally:
        telemetry.shutdown()
    requests = [s for s in spans.get_finished_spans() if s.name.startswith("chat ")]
    found = {
        (s.attributes["batchrun.variant"], s.attributes["gen_ai.request.model"], s.name)
        for s in requests
        if s.attributes is not None
    }
    assert found == {
        ("haiku", "claude-haiku-5-5", "chat claude-haiku-5-5"),
        ("sonnet", "claude-sonnet-5-5", "chat claude-sonnet-5-5"),
    }


async def test_validate_predicts_and_prices_each_variant(
    write_job: JobWriter, sim_server: StartSim, capsys: pytest.CaptureFixture[str]
) -> None:
    """validate counts every variant's requests and prices each at its own model."""
    server = sim_server()
    path = _job(write_job, server, TWO)
    seen = await predict(load_job(path))
    assert seen.requests == seen.to_send == 6
    by_name = {v.name: v for v in seen.variants}
    assert by_name["haiku"].price == (0.1, 0.5)
    assert by_name["sonnet"].price == (2.0, 10.0)
    assert by_name["haiku"].stream_usd is not None
    assert by_name["sonnet"].stream_usd is not None
    assert by_name["haiku"].stream_usd < by_name["sonnet"].stream_usd
    assert seen.stream_usd == pytest.approx(
        by_name["haiku"].stream_usd + by_name["sonnet"].stream_usd
    )
    assert await asyncio.to_thread(main, ["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "variants:   2" in out
    assert "claude-haiku-5-5's list prices" in out


# --- the job file ----------------------------------------------------------------------------


def _error(tmp_path: Path, variants: Any, **request: Any) -> str:
    job = {
        "name": "v",
        "input": {"path": "d.csv", "prompt": "{q}"},
        "request": {"model": "claude-sonnet-5-5", **request},
        "variants": variants,
    }
    path = tmp_path / "v.yaml"
    path.write_text(json.dumps(job), encoding="utf-8")
    with pytest.raises(JobError) as info:
        load_job(path)
    return str(info.value)


@pytest.mark.parametrize(
    ("variants", "expected"),
    [
        ([{"name": "a"}, {"name": "a"}], "variants[1].name: 'a' is also the name of variants[0]"),
        ([{"name": "a b"}], "variants[0].name: must be letters, digits"),
        ([{"name": "a", "request": {"maxTokens": 9}}], "variants[0].request.maxTokens: unknown"),
        ([{"name": "a", "input": {"path": "x.csv"}}], "variants[0].input.path: a variant"),
        ([{"name": "a", "request": {"mode": "batch"}}], "request.mode is the run's"),
        ([{"name": "a", "request": {"samples": 2}}], "request.samples is the run's"),
        ([{"name": "a", "request": {"api": "complete"}}], "request.api is the run's"),
        ([{"name": "a", "bogus": 1}], "variants[0].bogus: unknown key"),
        (
            [{"name": "x"}, {"name": "h", "request": {"max_tokens": 999999}}],
            "variants[1].request.max_tokens: variants[1] (h): 999999 is over",
        ),
        (
            [{"name": "t", "request": {"temperature": 0.5}}],
            "variants[0].request: variants[0] (t): sets temperature",
        ),
    ],
)
def test_bad_variants_are_refused_naming_the_variant(
    tmp_path: Path, variants: Any, expected: str
) -> None:
    """Each bad variant is an error at its key, naming it by index (and name when its request
    is wrong), with what to do."""
    assert expected in _error(tmp_path, variants)


def test_a_capped_job_needs_every_variants_price(tmp_path: Path) -> None:
    """With a spend cap, a variant whose model has no price is refused when the job is read."""
    job = {
        "name": "v",
        "input": {"path": "d.csv", "prompt": "{q}"},
        "request": {"model": "claude-sonnet-5-5"},
        "limits": {"max_cost_usd": 1},
        "variants": [{"name": "a"}, {"name": "new", "request": {"model": "claude-new-9"}}],
    }
    path = tmp_path / "v.yaml"
    path.write_text(json.dumps(job), encoding="utf-8")
    with pytest.raises(JobError, match=r"variants\[1\] \(new\) model claude-new-9 has no price"):
        load_job(path)


def test_without_variants_the_job_runs_one_named_default(tmp_path: Path) -> None:
    """A job without variants has one, default, with the job's request and input."""
    job = Job.model_validate(
        {
            "name": "v",
            "input": {"path": "d.csv", "prompt": "{q}"},
            "request": {"model": "claude-sonnet-5-5"},
        }
    )
    (variant,) = job.effective_variants
    assert (variant.name, variant.request, variant.input) == ("default", job.request, job.input)


def test_a_variant_prompt_replaces_the_messages_column(tmp_path: Path) -> None:
    """prompt and messages_column are alternatives: a variant giving one drops the other."""
    job = Job.model_validate(
        {
            "name": "v",
            "input": {"path": "d.csv", "messages_column": "conv"},
            "request": {"model": "claude-sonnet-5-5"},
            "variants": [{"name": "a"}, {"name": "b", "input": {"prompt": "{q}"}}],
        }
    )
    b = job.variant("b")
    assert (b.input.prompt, b.input.messages_column) == ("{q}", None)
    assert b.input_key("prompt") == "variants[1].input.prompt"
    assert job.variant("a").input.messages_column == "conv"


def test_batch_state_from_before_variants_reads_as_default() -> None:
    """A batch index entry written before variants (no variant key) is the default variant's."""
    entry = Entry.from_json(
        {"custom_id": "r1-0-abc", "id": "r1", "sample": 0, "request_hash": "h", "attempt": 1}
    )
    assert entry.variant == "default"
    assert Entry.from_json(entry.to_json()) == entry


async def test_the_response_cache_answers_variants_a_new_folder_shares(
    write_job: JobWriter, sim_server: StartSim, tmp_path: Path
) -> None:
    """A 2-variant job, then a copy with a third variant in a new folder, both with the
    response cache: the second run sends only the third variant's requests."""
    server = sim_server()
    cache = {"mode": "read_write", "dir": str(tmp_path / "cache")}
    first = await run_job(load_job(_job(write_job, server, TWO, cache=cache)), sleep=no_sleep)
    assert first.sent == 6
    third = [*TWO, {"name": "opus", "request": {"model": "claude-opus-5-5"}}]
    path = _job(write_job, server, third, cache=cache, output={"dir": "out2"})
    recorder = Recorder()
    outcome = await run_job(load_job(path), sleep=no_sleep, transport=recorder)
    assert outcome.sent == 3
    assert {b["model"] for b in recorder.sent} == {"claude-opus-5-5"}
    results = _table(outcome)
    hits = dict(results.group_by("variant").agg(pl.col("cache_hit").all()).iter_rows())
    assert hits == {"haiku": True, "opus": False, "sonnet": True}
