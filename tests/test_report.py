"""`batchrun report`: the summary against polars, the page, comparisons, the page in a browser."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.job.schema import load_job
from batchrun.record.schema import ATTEMPT_SCHEMA, RESULT_SCHEMA
from batchrun.report import compare_runs, load_run, render_html, summarize
from batchrun.report.series import Timeline, histogram, step_average
from batchrun.report.svg import nice_ticks
from batchrun.run import run_job
from tests.conftest import JobWriter, no_sleep

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
# A run with retries (an overload on the first attempt of some requests) and error rows (one
# question is always an invalid request).
FAULTY = {
    "sim": {
        "ttft_s": 0.01,
        "token_interval_s": 0.0005,
        "faults": [
            {"kind": "overloaded", "rate": 0.4, "attempts": [1]},
            {"kind": "invalid_request", "match": "spider"},
        ],
    }
}


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")


async def _sim_run(write_job: JobWriter, rows: int = 24) -> Path:
    outcome = await run_job(load_job(write_job(rows=rows, extra=FAULTY)), sleep=no_sleep)
    return outcome.run_dir


def _row(**values: Any) -> dict[str, Any]:
    """A results row with every column of the schema, null unless given."""
    return {**dict.fromkeys(RESULT_SCHEMA), "run_id": "run1", "sample": 0, **values}


def _write(run_dir: Path, rows: list[dict[str, Any]], name: str = "results.parquet") -> None:
    (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows, schema=RESULT_SCHEMA, orient="row").write_parquet(run_dir / name)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def synthetic_run(run_dir: Path, rows: int, seed: int = 7) -> None:
    """A run folder of `rows` generated results (and their attempts), in the exact schema."""
    rng = random.Random(seed)
    results, attempts = [], []
    for i in range(rows):
        start = _at(i * 0.02 + rng.random())
        tries = 1 if rng.random() > 0.05 else rng.randint(2, 4)
        wait = 0.5 * (tries - 1)
        failed = rng.random() < 0.01
        ttft, tpot, tokens = (
            rng.lognormvariate(-1.2, 0.4),
            rng.uniform(0.008, 0.02),
            rng.randint(20, 400),
        )
        e2e = ttft + tpot * (tokens - 1) + 0.01
        row = _row(
            id=f"q{i}",
            model="claude-sonnet-4-5",
            api="messages",
            status="error" if failed else "ok",
            attempts=tries,
            started_at=start,
            finished_at=start + timedelta(seconds=wait + e2e),
            queue_s=rng.random() * 0.1,
            retry_wait_s=wait,
            trace_id=f"{i:032x}",
            request_id=f"req_{i:08d}",
            http_status=529 if failed else 200,
        )
        if failed:
            row.update(
                error_type=rng.choice(["overloaded_error", "timeout"]), error_message="Overloaded"
            )
        else:
            row.update(
                completion=f"answer {i}",
                stop_reason="max_tokens" if rng.random() < 0.1 else "end_turn",
                input_tokens=rng.randint(10, 200),
                output_tokens=tokens,
                ttft_s=ttft,
                e2e_s=e2e,
                tpot_s=tpot,
                output_tokens_per_s=tokens / e2e,
                chunk_offsets_s=[ttft + tpot * k for k in range(0, tokens, 40)],
            )
        results.append(row)
        for n in range(1, tries + 1):
            ok = n == tries and not failed
            attempts.append(
                {
                    **dict.fromkeys(ATTEMPT_SCHEMA),
                    **{k: row[k] for k in ("run_id", "id", "sample")},
                    "attempt": n,
                    "outcome": "ok" if ok else rng.choice(["overloaded_error", "rate_limit_error"]),
                    "started_at": start + timedelta(seconds=0.5 * (n - 1)),
                    "finished_at": start + timedelta(seconds=0.5 * n - 0.1),
                }
            )
    _write(run_dir, results)
    pl.DataFrame(attempts, schema=ATTEMPT_SCHEMA, orient="row").write_parquet(
        run_dir / "attempts.parquet"
    )
    manifest = {"status": "complete", "job": {"limits": {"concurrency": 200}}}
    (run_dir / "run.json").write_text(json.dumps(manifest), encoding="utf-8")


@pytest.fixture(scope="module")
def big_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated run of 100,000 rows, shared by the tests of the page's size and rendering."""
    run_dir = tmp_path_factory.mktemp("big") / "run"
    synthetic_run(run_dir, 100_000)
    return run_dir


# --- the summary ------------------------------------------------------------------------------


async def test_summary_matches_polars_on_a_simulated_run(write_job: JobWriter) -> None:
    """Every number of the summary equals the same computation done by hand in polars."""
    run_dir = await _sim_run(write_job)
    summary = summarize(load_run(run_dir))
    results = pl.read_parquet(run_dir / "results.parquet")
    attempts = pl.read_parquet(run_dir / "attempts.parquet")
    ok = results.filter(pl.col("status") == "ok")

    assert summary["state"] == "complete"
    assert summary["rows"] == results.height == 24
    assert summary["status"] == {"ok": ok.height, "error": 24 - ok.height}
    assert summary["status"]["error"] == 3  # every eighth question is the spider one
    assert summary["errors"] == {"invalid_request_error": 3}
    assert sum(summary["stop_reasons"].values()) == ok.height
    assert summary["tokens"] == {
        "input": results["input_tokens"].sum(),
        "output": results["output_tokens"].sum(),
    }
    for key in ("ttft_s", "tpot_s", "e2e_s", "queue_s"):
        values = results[key].drop_nulls()
        assert summary[key]["count"] == values.len()
        for q in (0.5, 0.9, 0.99):
            assert summary[key][f"p{round(q * 100)}"] == pytest.approx(values.quantile(q, "linear"))
        assert summary[key]["max"] == pytest.approx(values.max())
        assert summary[key]["mean"] == pytest.approx(values.mean())
    per_stream = summary["stream_output_tokens_per_s"]
    assert per_stream["p50"] == pytest.approx(results["output_tokens_per_s"].median())
    duration = (results["finished_at"].max() - results["started_at"].min()).total_seconds()
    assert summary["duration_s"] == pytest.approx(duration)
    assert summary["requests_per_s"] == pytest.approx(24 / duration)
    assert summary["output_tokens_per_s"] == pytest.approx(
        results["output_tokens"].sum() / duration
    )
    assert summary["attempts"]["total"] == attempts.height == results["attempts"].sum()
    assert summary["attempts"]["retries"] == attempts.height - 24 > 0
    assert summary["attempts"]["rows_retried"] == results.filter(pl.col("attempts") > 1).height
    assert summary["retry_wait_s"]["total"] == pytest.approx(results["retry_wait_s"].sum())
    failed = attempts.filter(pl.col("outcome") != "ok")["outcome"].value_counts()
    assert summary["failed_attempts"] == dict(failed.iter_rows())


def test_summary_of_known_rows(tmp_path: Path) -> None:
    """Percentiles interpolate linearly; duration sums each session's span; no usage is null."""
    _write(
        tmp_path,
        [
            _row(
                id=f"r{i}",
                run_id="first" if i < 2 else "second",
                api="complete",
                status="ok",
                stop_reason="stop_sequence",
                attempts=1 + (i == 3),
                retry_wait_s=0.5 * (i == 3),
                ttft_s=0.1 * (i + 1),
                e2e_s=float(i + 1),
                started_at=_at(0 if i < 2 else 100),
                finished_at=_at(4 if i < 2 else 106),
            )
            for i in range(4)
        ]
        + [
            _row(
                id="bad",
                run_id="second",
                status="error",
                error_type="timeout",
                attempts=3,
                started_at=_at(101),
                finished_at=_at(102),
            )
        ],
    )
    summary = summarize(load_run(tmp_path))
    assert summary["state"] == "unknown"  # no run.json
    assert summary["run_ids"] == ["first", "second"]
    assert summary["ttft_s"]["count"] == 4
    assert summary["ttft_s"]["p50"] == pytest.approx(0.25)
    assert summary["ttft_s"]["p90"] == pytest.approx(0.37)
    assert summary["e2e_s"]["p99"] == pytest.approx(3.97)
    assert summary["tpot_s"] == {
        "count": 0,
        "mean": None,
        "p50": None,
        "p90": None,
        "p99": None,
        "max": None,
    }
    assert summary["duration_s"] == pytest.approx(
        4 + 6
    )  # the 94 s pause between sessions is not counted
    assert summary["requests_per_s"] == pytest.approx(0.5)
    assert summary["tokens"] == {"input": None, "output": None}
    assert summary["output_tokens_per_s"] is None
    assert summary["attempts"] == {"total": 8, "retries": 3, "rows_retried": 2, "max_per_row": 3}
    assert summary["errors"] == {"timeout": 1}
    assert summary["stop_reasons"] == {"stop_sequence": 4}


def test_a_partial_run_is_read_from_its_checkpoints(tmp_path: Path) -> None:
    """With parts on disk the summary reads them over the final file (later wins): partial."""
    _write(tmp_path, [_row(id=f"r{i}", status="error", error_type="timeout") for i in range(3)])
    _write(
        tmp_path,
        [_row(id="r0", status="ok", stop_reason="end_turn")],
        "parts/results-000001.parquet",
    )
    _write(
        tmp_path,
        [_row(id="r9", status="ok", stop_reason="end_turn")],
        "parts/results-000002.parquet",
    )
    (tmp_path / "run.json").write_text('{"status": "complete"}', encoding="utf-8")
    summary = summarize(load_run(tmp_path))
    assert summary["state"] == "partial"
    assert summary["rows"] == 4
    assert summary["status"] == {"ok": 2, "error": 2}


# --- plot data --------------------------------------------------------------------------------


def test_step_average_is_exact_per_bin() -> None:
    """In-flight levels are time-weighted per bin, and short bursts keep their full area."""
    line = Timeline(start=T0, edges=[0.0, 1.0, 2.0, 3.0, 4.0])
    events = pl.DataFrame({"t": [0.5, 2.0, 1.0, 1.001], "d": [1.0, -1.0, 1000.0, -1000.0]})
    averages = step_average(events, line)
    assert averages == pytest.approx([0.5, 2.0, 0.0, 0.0])


def test_histogram_clips_a_long_tail_into_its_last_bin() -> None:
    """A far outlier does not squash the bars: it is counted in the last one and reported."""
    hist = histogram(pl.Series([1.0] * 5000 + [1.1] * 5000 + [500.0]))
    assert hist is not None
    assert sum(hist.counts) == 10_001
    assert hist.overflow == 1
    assert hist.edges[-1] < 2


def test_nice_ticks() -> None:
    """Axis ticks fall on round numbers and cover the range."""
    assert nice_ticks(0, 100, 5) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(0, 0.37, 4) == [0, 0.1, 0.2, 0.3]


# --- the page ---------------------------------------------------------------------------------


EXTERNAL = re.compile(r"<script|<link|<img|<iframe|\bsrc=|\bhref=|url\(|@import|https?://", re.I)


def test_the_page_is_small_and_self_contained_for_100k_rows(big_run: Path) -> None:
    """100,000 rows make a page well under a few MB that refers to nothing outside itself."""
    run = load_run(big_run)
    started = time.perf_counter()
    page = render_html(run, summarize(run))
    assert time.perf_counter() - started < 20
    assert len(page.encode()) < 1_000_000
    assert not EXTERNAL.findall(page)
    assert page.count('<svg class="chart"') >= 7
    ok = run.results.filter(pl.col("status") == "ok")
    failed = run.results.filter(pl.col("status") == "error")
    assert ok.sort("e2e_s", descending=True)["trace_id"][0] in page  # the slowest row
    assert failed.sort("finished_at")["trace_id"][0] in page  # the first failed row


async def test_an_error_free_run_says_so(write_job: JobWriter) -> None:
    """With no retries and no errors the page says there is nothing to plot rather than failing."""
    outcome = await run_job(load_job(write_job(rows=3)), sleep=no_sleep)
    run = load_run(outcome.run_dir)
    page = render_html(run, summarize(run))
    assert "no failed attempts" in page
    assert "Failed rows (0)" in page


# --- the command ------------------------------------------------------------------------------


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


async def test_report_prints_the_summary_and_writes_the_page(write_job: JobWriter) -> None:
    """stdout holds the summary, stderr where the page went; report.html is in the run folder."""
    run_dir = await _sim_run(write_job)
    done = _cli(run_dir)
    assert done.returncode == 0, done.stderr
    assert "rows      24: ok 21 · error 3" in done.stdout
    assert "invalid_request_error 3" in done.stdout
    assert re.search(r"^ttft\s+21\s", done.stdout, re.M)
    assert str(run_dir / "report.html") in done.stderr
    assert "report.html" not in done.stdout
    assert (run_dir / "report.html").stat().st_size > 10_000


async def test_json_is_the_only_thing_on_stdout(write_job: JobWriter) -> None:
    """--json prints the summary as JSON and nothing else; --no-html writes no page."""
    run_dir = await _sim_run(write_job)
    done = _cli(run_dir, "--json", "--no-html")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == json.loads(json.dumps(summarize(load_run(run_dir))))
    assert not (run_dir / "report.html").exists()


@pytest.mark.parametrize("kind", ["empty", "missing", "not_a_run"])
def test_a_folder_without_results_exits_2_naming_it(tmp_path: Path, kind: str) -> None:
    """An empty, missing or foreign folder is exit 2 with one line naming the folder."""
    folder = tmp_path / "nothing-here"
    if kind != "missing":
        folder.mkdir()
    if kind == "not_a_run":
        (folder / "notes.txt").write_text("hello", encoding="utf-8")
    done = _cli(folder)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(f"batchrun: error: {folder}: no ")
    assert len(done.stderr.splitlines()) == 1


def test_help_names_the_report_command() -> None:
    """`batchrun --help` lists report; `batchrun report --help` explains its options."""
    overview = subprocess.run(
        [sys.executable, "-m", "batchrun.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "batchrun report RUN_DIR [RUN_B]" in overview.stdout
    done = _cli("--help")
    assert done.returncode == 0
    for word in ("--json", "--no-html", "--rows", "report.html", "compare"):
        assert word in done.stdout


async def test_a_page_that_cannot_be_written_is_a_warning(write_job: JobWriter) -> None:
    """When report.html cannot be written the summary is still printed, exit 0, with a warning."""
    run_dir = await _sim_run(write_job, rows=4)
    (run_dir / "report.html").mkdir()  # a folder in the way: the rename fails
    done = _cli(run_dir)
    assert done.returncode == 0
    assert "rows      4:" in done.stdout
    assert "warning: could not write report.html" in done.stderr
    assert not list(run_dir.glob(".report.html*"))


# --- comparison -------------------------------------------------------------------------------


async def test_two_runs_compared_on_id_and_sample(write_job: JobWriter, tmp_path: Path) -> None:
    """Deltas of the summaries, and exactly the rows whose completion changed, on both sides."""
    run_a = await _sim_run(write_job, rows=8)
    run_b = tmp_path / "run_b"
    run_b.mkdir()
    edited = (
        pl.read_parquet(run_a / "results.parquet")
        .with_columns(
            completion=pl.when(pl.col("id").is_in(["r1", "r2"]))
            .then(pl.lit("something else"))
            .otherwise(pl.col("completion"))
        )
        .filter(pl.col("id") != "r3")
    )
    extra = edited.filter(pl.col("id") == "r0").with_columns(sample=pl.lit(1, dtype=pl.Int64))
    pl.concat([edited, extra]).write_parquet(run_b / "results.parquet")
    shutil.copy(run_a / "attempts.parquet", run_b / "attempts.parquet")

    comparison = compare_runs(load_run(run_a), load_run(run_b))
    changed = comparison["completions"]
    assert (changed["compared"], changed["changed"]) == (7, 2)
    assert (changed["only_in_a"], changed["only_in_b"]) == (1, 1)
    assert [(r["id"], r["sample"]) for r in changed["rows"]] == [("r1", 0), ("r2", 0)]
    assert changed["rows"][0]["b"]["completion"] == "something else"
    rows = next(m for m in comparison["metrics"] if m["metric"] == "rows")
    assert rows == {"metric": "rows", "a": 8, "b": 8, "delta": 0, "relative": 0.0}

    done = _cli(run_a, run_b)
    assert done.returncode == 0, done.stderr
    assert "2 of 7 (id, sample) pairs in both runs changed" in done.stdout
    assert "'something else'" in done.stdout
    assert json.loads(_cli(run_a, run_b, "--json").stdout)["completions"]["changed"] == 2
    assert not (run_a / "report.html").exists()  # a comparison writes no page


# --- the page in a browser --------------------------------------------------------------------


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--remote-debugging-port=0",
]
CHARTS = """
Array.from(document.querySelectorAll('svg.chart')).map(s => {
  const box = s.getBoundingClientRect();
  return {label: s.getAttribute('aria-label'), width: box.width, height: box.height,
          marks: s.querySelectorAll('rect, polyline, polygon').length};
})
"""


class DevTools:
    """A minimal Chrome DevTools Protocol client over aiohttp's websocket, for one page."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self.ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if self.session is not None:
            message["sessionId"] = self.session
        await self.ws.send_json(message)
        while True:
            reply = await asyncio.wait_for(self.ws.receive_json(), 30)
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
            self.events.append(reply)

    async def wait_for(self, method: str) -> None:
        while not any(event.get("method") == method for event in self.events):
            self.events.append(await asyncio.wait_for(self.ws.receive_json(), 30))


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[int]:
    """Headless Chromium with the DevTools protocol on a free loopback port; yields the port."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium)")
    profile = tmp_path / "profile"
    log = (tmp_path / "chromium.log").open("w")
    process = subprocess.Popen(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
        assert process.poll() is None, (tmp_path / "chromium.log").read_text()
        assert time.monotonic() < deadline, "chromium did not open its DevTools port"
        time.sleep(0.05)
    try:
        yield int(port_file.read_text().splitlines()[0])
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


async def _open_in_browser(port: int, page: Path, screenshot: Path) -> dict[str, Any]:
    """Load `page`, collect its console errors and requests, measure its charts, screenshot it."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/version") as response:
            browser_ws = (await response.json())["webSocketDebuggerUrl"]
        async with http.ws_connect(browser_ws, max_msg_size=0) as ws:
            tools = DevTools(ws)
            target = await tools.send("Target.createTarget", url="about:blank")
            attached = await tools.send(
                "Target.attachToTarget", targetId=target["targetId"], flatten=True
            )
            tools.session = attached["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                await tools.send(f"{domain}.enable")
            await tools.send(
                "Emulation.setDeviceMetricsOverride",
                width=1280,
                height=900,
                deviceScaleFactor=1,
                mobile=False,
            )
            await tools.send("Page.navigate", url=page.as_uri())
            await tools.wait_for("Page.loadEventFired")
            charts = await tools.send("Runtime.evaluate", expression=CHARTS, returnByValue=True)
            scripts = await tools.send(
                "Runtime.evaluate", expression="document.scripts.length", returnByValue=True
            )
            shot = await tools.send(
                "Page.captureScreenshot", format="png", captureBeyondViewport=True
            )
            await asyncio.to_thread(_save, screenshot, base64.b64decode(shot["data"]))
            await tools.send("Target.closeTarget", targetId=target["targetId"])
    events = tools.events
    return {
        "charts": charts["result"]["value"],
        "scripts": scripts["result"]["value"],
        "requests": [
            e["params"]["request"]["url"]
            for e in events
            if e.get("method") == "Network.requestWillBeSent"
        ],
        "errors": [
            e["params"]
            for e in events
            if e.get("method") == "Runtime.exceptionThrown"
            or (
                e.get("method") == "Runtime.consoleAPICalled"
                and e["params"]["type"] in ("error", "assert")
            )
            or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
        ],
    }


def _save(path: Path, data: bytes) -> None:
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)


@pytest.mark.parametrize("which", ["simulated", "100k"])
async def test_the_page_renders_in_chromium_offline(
    chromium: int, write_job: JobWriter, big_run: Path, which: str
) -> None:
    """Headless Chromium shows every plot, logs no error and requests nothing but the file."""
    run_dir = await _sim_run(write_job, rows=48) if which == "simulated" else big_run
    done = _cli(run_dir)
    assert done.returncode == 0, done.stderr
    page = run_dir / "report.html"
    seen = await _open_in_browser(chromium, page, ARTIFACTS / f"report-{which}.png")
    assert seen["errors"] == []
    assert seen["requests"] == [page.as_uri()]
    assert seen["scripts"] == 0
    charts = seen["charts"]
    assert len(charts) >= 7
    for chart in charts:
        assert chart["width"] > 200, chart
        assert chart["height"] > 30, chart
        assert chart["marks"] > 0, chart  # bars, lines or areas were drawn
    assert (ARTIFACTS / f"report-{which}.png").stat().st_size > 50_000
