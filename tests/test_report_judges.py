"""The report counts the judges: the requests of ``kind: model`` scorers cost money beside the
generation's, and the report shows both, as the spend cap counts both."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.job.schema import load_job
from batchrun.report import report_command
from batchrun.report.text import usd
from batchrun.run import run_job
from batchrun.schedule.spend import judges_spent
from batchrun.shard import Shard
from batchrun.shard.merge import merge_job
from tests.conftest import JobWriter, no_sleep

PRICES = {
    "claude-sonnet-5-5": {"input": 3.0, "output": 15.0},
    "claude-haiku-4-5": {"input": 1.0, "output": 5.0},
}
JUDGE = {
    "name": "judge",
    "kind": "model",
    "model": "claude-haiku-4-5",
    "prompt": "Q: {question}\nA: {completion}\nReply GRADE: C or GRADE: I.",
    "grade_pattern": "GRADE: ([CI])",
    "values": {"C": 1, "I": 0},
}


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")


def _report(run_dirs: list[Path], **options: Any) -> str:
    out = StringIO()
    report_command(run_dirs, out=out, err=StringIO(), **options)
    return out.getvalue()


async def test_the_judges_cost_is_shown_beside_the_generations(write_job: JobWriter) -> None:
    """A run scored by a judge on the simulator: the report's judges' cost is the sum of the
    judge folder's cost_usd (judgements.parquet's too), what the spend cap counts; the total is
    both; the terminal, --json and the page say so, and run.json's cost stays the generation's."""
    path = write_job(rows=6, extra={"prices": PRICES, "scorers": [JUDGE]})
    job = load_job(path)
    outcome = await run_job(job, sleep=no_sleep)
    assert outcome.exit_code == 0
    run_dir = outcome.run_dir
    generated = float(pl.read_parquet(run_dir / "results.parquet")["cost_usd"].sum())
    judged = pl.read_parquet(run_dir / "judge" / "judge" / "results.parquet")
    judgements = pl.read_parquet(run_dir / "judgements.parquet")
    assert judged.height == judgements.height == 6
    assert judged["model"].unique().to_list() == ["claude-haiku-4-5"]
    judges_usd = float(judged["cost_usd"].sum())
    assert judges_usd > 0

    cost = json.loads(_report([run_dir], as_json=True, html=False))["cost"]
    judges = cost["judges"]
    assert judges["cost_usd"] == pytest.approx(judges_usd)
    assert judges["cost_usd"] == pytest.approx(judgements["cost_usd"].sum())
    assert judges["cost_usd"] == pytest.approx(judges_spent(job, run_dir))
    assert (judges["requests"], judges["output_tokens"]) == (6, judged["output_tokens"].sum())
    (scorer,) = judges["scorers"]
    assert (scorer["scorer"], scorer["requests"]) == ("judge", 6)
    assert scorer["cost_usd"] == judges["cost_usd"]
    assert cost["cost_usd"] == pytest.approx(generated)  # the generation's, as before
    assert cost["total_usd"] == pytest.approx(generated + judges_usd)
    manifest = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["cost"]
    assert "judges" not in manifest
    assert {k: v for k, v in cost.items() if k not in ("judges", "total_usd")} == manifest

    text = _report([run_dir], html=True)
    (line,) = [line for line in text.splitlines() if line.startswith("judges ")]
    assert "for 6 requests of the model scorers (judge $" in line
    assert f"with the generation {usd(cost['total_usd'])}" in line
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "judges&#x27; est. cost" in page
    assert f"6 judge requests · total {usd(cost['total_usd'])}" in page


async def test_a_run_without_judges_keeps_its_cost_as_run_json_has_it(
    write_job: JobWriter,
) -> None:
    """No model scorer, no judges folder: the report's cost is run.json's, key for key, and no
    judges line is printed."""
    outcome = await run_job(load_job(write_job(rows=3, extra={"prices": PRICES})), sleep=no_sleep)
    cost = json.loads(_report([outcome.run_dir], as_json=True, html=False))["cost"]
    manifest = json.loads((outcome.run_dir / "run.json").read_text(encoding="utf-8"))["cost"]
    assert cost == manifest
    assert not any(
        line.startswith("judges ") for line in _report([outcome.run_dir], html=False).splitlines()
    )


async def test_report_a_b_compares_the_judges_cost(write_job: JobWriter) -> None:
    """A run without judges against the same job scored by a judge: the comparison has the
    generation's cost of each and the judges' (none in A: $0), in dollars with four decimals
    below a cent."""
    plain = write_job(rows=4, extra={"prices": PRICES, "output": {"dir": "out-a"}}, name="a")
    run_a = (await run_job(load_job(plain), sleep=no_sleep)).run_dir
    judged = write_job(
        rows=4,
        extra={"prices": PRICES, "scorers": [JUDGE], "output": {"dir": "out-b"}},
        name="b",
    )
    run_b = (await run_job(load_job(judged), sleep=no_sleep)).run_dir
    judges_usd = float(pl.read_parquet(run_b / "judgements.parquet")["cost_usd"].sum())
    metrics = {
        m["metric"]: m
        for m in json.loads(_report([run_a, run_b], as_json=True, html=False))["metrics"]
    }
    judges = metrics["judges' est. cost $"]
    assert judges["a"] == 0.0
    assert judges["b"] == pytest.approx(judges_usd) == judges["delta"]
    cost = metrics["est. cost $"]
    assert cost["a"] == pytest.approx(pl.read_parquet(run_a / "results.parquet")["cost_usd"].sum())
    text = _report([run_a, run_b], html=True)
    (line,) = [line for line in text.splitlines() if line.startswith("judges' est. cost $")]
    assert line.split()[4:6] == ["$0.00", usd(judges_usd)]
    page = (run_a / "compare.html").read_text(encoding="utf-8")
    assert f'<td class="n">{usd(judges_usd)}</td>' in page


async def test_the_judges_of_shards_count_unmerged_and_merged(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """Two shards, each scored by the judge at its end: the report of the folder not merged
    yet counts both shards' judges, and the merged folder's report the same."""
    job = load_job(write_job(rows=8, extra={"prices": PRICES, "scorers": [JUDGE]}))
    folders = []
    for k in range(2):
        outcome = await run_job(job.with_shard(Shard(k, 2)), sleep=no_sleep)
        assert outcome.exit_code == 0
        folders.append(outcome.run_dir)
    judged = pl.concat(pl.read_parquet(f / "judge" / "judge" / "results.parquet") for f in folders)
    assert judged.height == 8
    out = tmp_path / "out"
    unmerged = json.loads(_report([out], as_json=True, html=False))
    assert unmerged["state"] == "unmerged"
    judges = unmerged["cost"]["judges"]
    assert judges["requests"] == 8
    assert judges["cost_usd"] == pytest.approx(float(judged["cost_usd"].sum()))
    assert merge_job(job).exit_code == 0
    merged = json.loads(_report([out], as_json=True, html=False))["cost"]["judges"]
    assert merged["requests"] == 8
    assert merged["cost_usd"] == pytest.approx(judges["cost_usd"])


async def test_judges_answered_by_the_response_cache_are_counted_as_such(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """A second folder of the same job with the response cache on: its judges' requests were
    all answered by the cache, cost nothing, and the report says so rather than calling them
    requests it paid for."""
    cache = {"mode": "read_write", "dir": str(tmp_path / "cache")}
    path = write_job(rows=6, extra={"prices": PRICES, "scorers": [JUDGE], "cache": cache})
    first = await run_job(load_job(path), sleep=no_sleep)
    again = await run_job(load_job(path, ["output.dir=again"]), sleep=no_sleep)
    assert (first.exit_code, again.exit_code, again.sent) == (0, 0, 0)
    judges = json.loads(_report([first.run_dir], as_json=True, html=False))["cost"]["judges"]
    assert (judges["requests"], judges["cache_hits"]) == (6, 0)
    assert "from the response cache" not in _report([first.run_dir], html=False)
    judges = json.loads(_report([again.run_dir], as_json=True, html=False))["cost"]["judges"]
    assert (judges["requests"], judges["cache_hits"], judges["cost_usd"]) == (6, 6, 0)
    assert judges["scorers"][0]["cache_hits"] == 6
    text = _report([again.run_dir], html=False)
    assert "for 6 requests of the model scorers, 6 of them from the response cache" in text
