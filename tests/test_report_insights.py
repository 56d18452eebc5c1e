"""`batchrun report`: summaries that tell the truth (badge, API texts, throughput, --limit), what
an eval reader looks at first (completions, lengths, concurrency, rows/s), --by, compare.html."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html import escape
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.job.schema import load_job
from batchrun.report import breakdown, load_run, render_html, render_summary, summarize
from batchrun.report.activity import outcome, state_line
from batchrun.report.completions import TEXT_LIMIT
from batchrun.report.load import WIDE_COLUMNS, RunData
from batchrun.run import run_job
from tests.conftest import QUESTIONS, JobWriter, no_sleep
from tests.test_report import (  # chromium: the fixture, found by its name here
    ARTIFACTS,
    _at,
    _open_in_browser,
    _row,
    _write,
    chromium,  # noqa: F401
)

FAST = {"ttft_s": 0.002, "token_interval_s": 0.0002}
# Every first attempt of some requests is refused with 429 (a short retry-after) or 529; the
# spider question is always an invalid request.
FAULTY = {
    "sim": {
        **FAST,
        "faults": [
            {"kind": "rate_limited", "rate": 0.3, "attempts": [1], "retry_after_s": 0.002},
            {"kind": "overloaded", "rate": 0.3, "attempts": [1]},
            {"kind": "invalid_request", "match": "spider"},
        ],
    }
}
ALL_FAIL = {"sim": {**FAST, "faults": [{"kind": "invalid_request"}]}}
TOPICS = ["geo", "bio", "physics", "math"]


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")


async def _run(write_job: JobWriter, rows: int, extra: dict[str, Any]) -> Path:
    outcome_ = await run_job(load_job(write_job(rows=rows, extra=extra)), sleep=no_sleep)
    return outcome_.run_dir


def _with_topics(job: Path, rows: int, *, id_column: bool = True) -> None:
    """Rewrite the job's data.csv with a topic column (and without ids when asked)."""
    lines = ["id,question,topic" if id_column else "question,topic"]
    for i in range(rows):
        cells = [f"r{i}"] if id_column else []
        lines.append(",".join([*cells, f'"{QUESTIONS[i % len(QUESTIONS)]}"', TOPICS[i % 4]]))
    (job.parent / "data.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "batchrun.cli", "report", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def _badge(page: str) -> tuple[str, str]:
    found = re.search(r'<span class="badge (\w+)"[^>]*>([^<]*)</span>', page)
    assert found is not None
    return found.group(1), found.group(2)


# --- the outcome ------------------------------------------------------------------------------


async def test_a_run_where_every_row_failed_reads_as_failed(write_job: JobWriter) -> None:
    """All rows failed: red badge, FAILED line, no tokens text of another API, 0 ok rows/s."""
    run_dir = await _run(write_job, 6, ALL_FAIL)
    run = load_run(run_dir)
    summary = summarize(run)
    assert summary["state"] == "complete"
    assert summary["outcome"] == {"level": "bad", "ok_share": 0.0, "text": "every row failed (6)"}
    assert summary["api"] == "messages"
    assert summary["throughput"]["ok_per_s"] == 0
    assert summary["throughput"]["error_per_s"] == pytest.approx(6 / summary["duration_s"])
    assert summary["output_length"]["count"] == 0

    text = render_summary(summary)
    assert "outcome   FAILED: every row failed (6)" in text
    assert "tokens    none: no row succeeded" in text
    assert "legacy" not in text
    page = render_html(run, summary)
    level, words = _badge(page)
    assert level == "bad"
    assert words == "complete · every row failed (6)"
    assert "badge ok" not in page
    assert "legacy complete API" not in page
    assert "no output token counts (no row succeeded)" in page
    failed = summary["completions"]["failed"]
    assert len(failed) == 5
    assert {row["error_type"] for row in failed} == {"invalid_request_error"}
    assert all(row["error_message"] for row in failed)
    assert summary["completions"]["slowest"] == []


async def test_some_failed_is_amber_and_all_ok_is_green(write_job: JobWriter) -> None:
    """The badge is green only when every row is ok; a few errors make it amber."""
    faulty = summarize(load_run(await _run(write_job, 16, FAULTY)))
    assert faulty["outcome"]["level"] == "warn"
    assert faulty["outcome"]["text"] == "14 of 16 rows ok (87.5%), 2 failed"
    clean_run = load_run(await _run(write_job, 4, {"sim": FAST, "output": {"dir": "clean"}}))
    clean = summarize(clean_run)
    assert clean["outcome"] == {"level": "ok", "ok_share": 1.0, "text": "all 4 rows ok"}
    assert _badge(render_html(clean_run, clean))[0] == "ok"


def test_outcome_levels() -> None:
    """An unfinished run is red even when its rows are ok; no run.json is amber at best."""
    assert outcome("interrupted", 5, 0)["level"] == "bad"
    assert outcome("partial", 5, 0)["level"] == "bad"
    assert outcome("unknown", 5, 0)["level"] == "warn"
    assert outcome("complete", 0, 0) == {"level": "bad", "ok_share": None, "text": "no rows"}


async def test_throughput_counts_ok_rows(write_job: JobWriter) -> None:
    """ok rows/s and errors/s split the rows; the terminal shows both."""
    summary = summarize(load_run(await _run(write_job, 16, FAULTY)))
    duration = summary["duration_s"]
    assert summary["throughput"]["ok_per_s"] == pytest.approx(14 / duration)
    assert summary["throughput"]["error_per_s"] == pytest.approx(2 / duration)
    line = next(ln for ln in render_summary(summary).splitlines() if ln.startswith("duration"))
    assert "ok rows/s (errors " in line


async def test_the_complete_api_says_it_counts_no_tokens(write_job: JobWriter) -> None:
    """On the legacy API the tokens text names it, and lengths are characters of completions."""
    run_dir = await _run(write_job, 6, {"request": {"api": "complete"}, "sim": FAST})
    run = load_run(run_dir)
    summary = summarize(run)
    assert summary["api"] == "complete"
    assert "tokens    none: the legacy complete API reports no token counts" in render_summary(
        summary
    )
    lengths = pl.read_parquet(run_dir / "results.parquet")["completion"].str.len_chars()
    assert summary["output_length"]["unit"] == "characters"
    assert summary["output_length"]["max"] == lengths.max()
    assert summary["output_length"]["p50"] == pytest.approx(lengths.quantile(0.5, "linear"))
    assert "Characters of the completion" in render_html(run, summary)


async def test_a_limited_run_says_so(write_job: JobWriter) -> None:
    """With run.json's --limit keys the state reads "complete: 3 of 8 rows (--limit)"; an older
    run.json without them reads plain "complete"."""
    run_dir = await _run(write_job, 8, {"sim": FAST})
    assert summarize(load_run(run_dir))["state_line"] == "complete"
    manifest = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    manifest.update(options={"limit": 3}, input_rows=3, input_rows_total=8, limited=True)
    (run_dir / "run.json").write_text(json.dumps(manifest), encoding="utf-8")
    run = load_run(run_dir)
    summary = summarize(run)
    assert summary["input"] == {"rows": 3, "rows_total": 8, "limit": 3, "limited": True}
    assert "(complete: 3 of 8 rows (--limit))" in render_summary(summary).splitlines()[0]
    assert "complete: 3 of 8 rows (--limit) · all 8 rows ok" in _badge(render_html(run, summary))[1]
    assert state_line("complete", {**summary["input"], "rows_total": None}) == (
        "complete: first 3 rows (--limit)"
    )


async def test_cache_figures_show_when_run_json_has_them(write_job: JobWriter) -> None:
    """The cost line shows the prompt cache's part when rows read or wrote the cache, and
    nothing about it when none did."""
    run_dir = await _run(write_job, 3, {"sim": FAST})
    cost_line = next(
        ln for ln in render_summary(summarize(load_run(run_dir))).splitlines() if "cost " in ln
    )
    assert "cache" not in cost_line
    results = pl.read_parquet(run_dir / "results.parquet")
    results.with_columns(
        cache_read_input_tokens=pl.lit(400, pl.Int64),
        cache_creation_input_tokens=pl.lit(100, pl.Int64),
    ).write_parquet(run_dir / "results.parquet")
    cost = summarize(load_run(run_dir))["cost"]
    uncached = int(results["input_tokens"].sum())
    assert cost["cache_hit_rate"] == pytest.approx(1200 / (uncached + 1200 + 300))
    text = render_summary(summarize(load_run(run_dir)))
    assert "cache: read 1,200 · written 300 input tokens, hit rate" in text
    assert ", saved $" in text
    results.with_columns(
        cache_read_input_tokens=pl.lit(0, pl.Int64),
        cache_creation_input_tokens=pl.lit(100_000, pl.Int64),
        cache_creation_5m_input_tokens=pl.lit(100_000, pl.Int64),
        cache_creation_1h_input_tokens=pl.lit(0, pl.Int64),
    ).write_parquet(run_dir / "results.parquet")
    text = render_summary(summarize(load_run(run_dir)))
    # 300,000 tokens written at 1.25x, none read: the cache cost 0.25 x $2/M x 300,000 more
    assert "hit rate 0.0%, cost $0.15 more" in text


# --- what a reader looks at first -------------------------------------------------------------


async def test_completions_shown_are_the_slowest_failed_and_fixed_random(
    write_job: JobWriter,
) -> None:
    """Slowest ok rows by e2e, failed rows with their error, random picks stable per folder."""
    run_dir = await _run(write_job, 16, FAULTY)
    results = pl.read_parquet(run_dir / "results.parquet")
    picked = summarize(load_run(run_dir))["completions"]
    slowest = results.filter(pl.col("status") == "ok").sort("e2e_s", descending=True).head(5)
    assert [r["id"] for r in picked["slowest"]] == slowest["id"].to_list()
    assert [r["completion"] for r in picked["slowest"]] == slowest["completion"].to_list()
    assert [r["id"] for r in picked["failed"]] == ["r6", "r14"]  # the spider questions
    assert picked["failed"][0]["completion"] is None
    assert len(picked["random"]) == 5
    assert len({r["id"] for r in picked["random"]}) == 5
    assert summarize(load_run(run_dir))["completions"]["random"] == picked["random"]


def test_completions_are_cut_short_and_escaped(tmp_path: Path) -> None:
    """A long completion is cut to the limit; markup in it is escaped on the page."""
    _write(
        tmp_path,
        [
            _row(
                id=f"r{i}",
                status="ok",
                stop_reason="end_turn",
                output_tokens=10,
                e2e_s=1.0 + i,
                started_at=_at(0),
                finished_at=_at(2 + i),
                completion="<script>alert(1)</script>" + "x" * 5000 * i,
            )
            for i in range(2)
        ],
    )
    run = load_run(tmp_path)
    assert not set(WIDE_COLUMNS) & set(run.results.columns)  # text stays on disk
    summary = summarize(run)
    longest = summary["completions"]["slowest"][0]["completion"]
    assert len(longest) == TEXT_LIMIT
    assert longest.endswith("…")
    page = render_html(run, summary)
    assert "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


async def test_concurrency_and_rows_per_second_over_time(write_job: JobWriter) -> None:
    """Attempts in flight never exceed limits.concurrency; 429s are counted with their pause;
    the rows/s series adds up to the rows."""
    run_dir = await _run(write_job, 24, FAULTY)
    attempts = pl.read_parquet(run_dir / "attempts.parquet")
    summary = summarize(load_run(run_dir))
    c = summary["concurrency"]
    assert c["configured"] == 4
    assert 1 <= c["peak"] <= 4
    # the peak by hand: at each attempt's start, how many attempts are open
    starts = attempts["started_at"].to_list()
    ends = attempts["finished_at"].to_list()
    by_hand = max(sum(s <= t < e for s, e in zip(starts, ends, strict=True)) for t in starts)
    assert c["peak"] == by_hand
    busy = (attempts["finished_at"] - attempts["started_at"]).dt.total_microseconds().sum() / 1e6
    assert c["mean"] == pytest.approx(busy / summary["duration_s"])
    limited = attempts.filter(pl.col("outcome") == "rate_limit_error")
    assert c["rate_limited"] == limited.height > 0
    assert c["pause_s"] == pytest.approx(limited["retry_after_s"].sum())
    over = summary["over_time"]
    assert summary["status"] == {"ok": 21, "error": 3}  # every eighth question is the spider one
    assert sum(over["ok_per_s"]) * over["bin_s"] == pytest.approx(21, abs=0.01)
    assert sum(over["error_per_s"]) * over["bin_s"] == pytest.approx(3, abs=0.01)
    assert max(over["in_flight"]) <= 4
    text = render_summary(summary)
    assert "(limits.concurrency 4); 429 pauses" in text
    assert re.search(r"^  ok/s      [ ▁▂▃▄▅▆▇█]*[▁▂▃▄▅▆▇█][ ▁▂▃▄▅▆▇█]*\|$", text, re.M)


async def test_the_page_draws_the_new_panels(write_job: JobWriter) -> None:
    """Lengths, rows/s, concurrency against the limit with 429 pauses, and completions."""
    run = load_run(await _run(write_job, 24, FAULTY))
    page = render_html(run, summarize(run))
    for title in (
        "Output length of ok rows",
        "Rows finished per second",
        "Effective concurrency: attempts in flight",
        "Completions: the slowest, the failed and a few at random",
        "limits.concurrency 4",
        "429 pauses going on",
        "Invalid request (simulated fault)",
    ):
        assert title in page, title


# --- --by COLUMN ------------------------------------------------------------------------------


async def test_by_column_breaks_the_summary_down(write_job: JobWriter) -> None:
    """Per topic: rows, ok, tokens and latency percentiles equal a polars join done by hand."""
    job = write_job(rows=16, extra=FAULTY)
    _with_topics(job, 16)
    run_dir = (await run_job(load_job(job), sleep=no_sleep)).run_dir
    done = _cli(run_dir, "--by", "topic", "--json")
    assert done.returncode == 0, done.stderr
    by = json.loads(done.stdout)["by"]
    assert by["column"] == "topic"
    assert by["joined_on"] == "id"
    expected = (
        pl.read_parquet(run_dir / "results.parquet")
        .join(pl.read_csv(job.parent / "data.csv"), on="id")
        .group_by("topic")
        .agg(
            rows=pl.len(),
            ok=(pl.col("status") == "ok").sum(),
            output_tokens=pl.col("output_tokens").sum(),
            e2e_s_p90=pl.col("e2e_s").quantile(0.9, "linear"),
        )
    )
    groups = {g["value"]: g for g in by["groups"]}
    assert set(groups) == set(TOPICS)
    for row in expected.iter_rows(named=True):
        group = groups[row["topic"]]
        assert (group["rows"], group["ok"]) == (row["rows"], row["ok"])
        assert group["output_tokens"] == row["output_tokens"]
        assert group["e2e_s_p90"] == pytest.approx(row["e2e_s_p90"])
    assert groups["physics"]["ok_share"] == pytest.approx(0.5)  # rows 6 and 14: the spider
    text = _cli(run_dir, "--by", "topic").stdout
    assert "by topic (joined on id)" in text
    assert re.search(r"^physics\s+4\s+2\s+50\.0\s", text, re.M)
    assert "By topic (input column, joined on id)" in (run_dir / "report.html").read_text()


async def test_by_column_without_an_id_column_joins_on_the_row(write_job: JobWriter) -> None:
    """With no input.id_column the id is the row's position, and the join uses it."""
    job = write_job(rows=8, extra={"sim": FAST, "input": {"id_column": None}})
    _with_topics(job, 8, id_column=False)
    run = load_run((await run_job(load_job(job), sleep=no_sleep)).run_dir)
    by = breakdown(run, "topic")
    assert {g["value"]: g["rows"] for g in by["groups"]} == dict.fromkeys(TOPICS, 2)


async def test_by_a_missing_column_or_input_is_exit_2_naming_both(write_job: JobWriter) -> None:
    """A column the input lacks, or an input that is gone: exit 2, one line naming both."""
    job = write_job(rows=4, extra={"sim": FAST})
    run_dir = (await run_job(load_job(job), sleep=no_sleep)).run_dir
    done = _cli(run_dir, "--by", "difficulty")
    assert done.returncode == 2
    assert done.stdout == ""
    assert "--by difficulty: the input data.csv has no column 'difficulty'" in done.stderr
    assert "(its columns: id, question)" in done.stderr
    (job.parent / "data.csv").unlink()
    done = _cli(run_dir, "--by", "topic")
    assert done.returncode == 2
    assert "--by topic: the run's input data.csv is not there any more" in done.stderr
    assert len(done.stderr.splitlines()) == 1


# --- report A B -------------------------------------------------------------------------------


async def test_report_a_b_writes_a_side_by_side_page(write_job: JobWriter) -> None:
    """compare.html in A's folder: both runs' headers, the metrics, both texts of a changed row."""
    run_a = await _run(write_job, 8, {"sim": FAST})
    run_b = await _run(write_job, 8, {"sim": {**FAST, "seed": 1}, "output": {"dir": "b"}})
    done = _cli(run_a, run_b)
    assert done.returncode == 0, done.stderr
    assert str(run_a / "compare.html") in done.stderr
    page = (run_a / "compare.html").read_text(encoding="utf-8")
    assert page.count('<span class="badge ok"') == 2
    assert "Metrics, B against A" in page
    assert "B: end-to-end latency" in page
    a = pl.read_parquet(run_a / "results.parquet").sort("id")["completion"][0]
    b = pl.read_parquet(run_b / "results.parquet").sort("id")["completion"][0]
    assert a != b
    assert escape(a[:200]) in page
    assert escape(b[:200]) in page
    assert not (run_a / "report.html").exists()
    (run_a / "compare.html").unlink()
    assert _cli(run_a, run_b, "--no-html").returncode == 0
    assert not (run_a / "compare.html").exists()


async def test_the_comparison_page_renders_in_chromium_offline(
    request: pytest.FixtureRequest, write_job: JobWriter
) -> None:
    """Headless Chromium shows every chart of compare.html, logs no error, loads nothing else."""
    port = request.getfixturevalue("chromium")  # skips when chromium is not installed
    run_a = await _run(write_job, 24, FAULTY)
    run_b = await _run(write_job, 24, {"sim": {**FAST, "seed": 1}, "output": {"dir": "b"}})
    assert _cli(run_a, run_b).returncode == 0
    page = run_a / "compare.html"
    seen = await _open_in_browser(port, page, ARTIFACTS / "compare.png")
    assert seen["errors"] == []
    assert seen["requests"] == [page.as_uri()]
    assert seen["scripts"] == 0
    assert len(seen["charts"]) == 8
    for chart in seen["charts"]:
        assert chart["width"] > 200, chart
        assert chart["marks"] > 0, chart


def test_by_joins_on_input_row_and_sums_row_costs(tmp_path: Path) -> None:
    """Without an id column, results carrying input_row join on it (whatever their ids), and
    the rows' cost_usd is summed per group and over the run."""
    (tmp_path / "data.csv").write_text("question,topic\na,x\nb,y\nc,x\n", encoding="utf-8")
    rows = [
        _row(id=f"id-{i}", status="ok", stop_reason="end_turn", e2e_s=0.1 * (i + 1))
        for i in range(3)
    ]
    _write(tmp_path / "run", rows)
    results = pl.DataFrame(rows).with_columns(
        input_row=pl.Series([2, 0, 1], dtype=pl.Int64), cost_usd=pl.Series([0.5, 0.25, 0.125])
    )
    job = {"job_file": str(tmp_path / "job.yaml"), "input": {"path": "data.csv", "id_column": None}}
    run = RunData(
        run_dir=tmp_path / "run",
        results=results,
        attempts=pl.DataFrame(),
        manifest={"job": job},
        state="complete",
    )
    by = breakdown(run, "topic")
    assert by["joined_on"] == "input_row"
    groups = {g["value"]: g for g in by["groups"]}
    # input rows 0 and 2 are topic x: id-1 (0.25) and id-0 (0.5)
    assert (groups["x"]["rows"], groups["x"]["cost_usd"]) == (2, 0.75)
    assert (groups["y"]["rows"], groups["y"]["cost_usd"]) == (1, 0.125)
    assert groups["x"]["e2e_s_p50"] == pytest.approx(0.15)
