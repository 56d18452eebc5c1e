"""The response cache across run folders (record/response_cache.py, cache: in the job)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from batchrun.batch import session as batch_session
from batchrun.job.schema import load_job
from batchrun.record.response_cache import CACHED_COLUMNS, ResponseCache, cache_file, cache_key
from batchrun.report.load import load_run
from batchrun.report.summary import summarize
from batchrun.run import run_job
from tests.conftest import QUESTIONS, JobWriter, run_cli


def _csv(path: Path, questions: list[str]) -> None:
    lines = ["id,question"] + [f"r{i},{q}" for i, q in enumerate(questions)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _cache_job(
    write_job: JobWriter,
    url: str,
    cache_dir: Path,
    *,
    name: str,
    mode: str = "read_write",
    data: str = "data.csv",
    rows: int = 6,
) -> Path:
    return write_job(
        rows=rows,
        name=name,
        extra={
            "endpoint": {"base_url": url},
            "input": {"path": data},
            "output": {"dir": f"out-{name}"},
            "cache": {"mode": mode, "dir": str(cache_dir)},
        },
    )


def _results(job: Path) -> pl.DataFrame:
    name = job.stem
    return pl.read_parquet(job.parent / f"out-{name}" / "results.parquet").sort("id")


def _cache_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchrun.cli", "cache", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _entries(cache_dir: Path) -> int:
    done = _cache_cli("info", "--dir", str(cache_dir), "--json")
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout)["entries"])


def test_second_folder_sends_only_the_changed_rows(
    write_job: JobWriter, sim_server: Any, tmp_path: Path
) -> None:
    """A copy of a job in a new folder, two prompts changed: only those two are sent; the others
    are hits with the first run's answers, no attempts and no cost; the report's timings skip
    them."""
    server = sim_server()
    cache_dir = tmp_path / "cache"
    first = _cache_job(write_job, server.base_url, cache_dir, name="first")
    done = run_cli(first)
    assert done.returncode == 0, done.stderr
    assert server.stats.total_requests == 6
    assert _entries(cache_dir) == 6

    questions = [QUESTIONS[i] for i in range(6)]
    questions[1], questions[4] = "A new question one?", "A new question four?"
    _csv(tmp_path / "data2.csv", questions)
    second = _cache_job(write_job, server.base_url, cache_dir, name="second", data="data2.csv")
    done = run_cli(second)
    assert done.returncode == 0, done.stderr
    assert server.stats.total_requests == 6 + 2
    finished = [json.loads(line) for line in done.stderr.splitlines() if "run.finished" in line]
    assert [(f["sent"], f["cache_hits"], f["ok"]) for f in finished] == [(2, 4, 6)]

    before, after = _results(first), _results(second)
    assert after["cache_hit"].to_list() == [True, False, True, True, False, True]
    hits = after.filter(pl.col("cache_hit"))
    assert sorted(hits["id"].to_list()) == ["r0", "r2", "r3", "r5"]
    assert sorted(after.filter(~pl.col("cache_hit"))["id"].to_list()) == ["r1", "r4"]
    assert after["status"].to_list() == ["ok"] * 6
    assert after["run_id"].n_unique() == 1
    assert after["run_id"][0] != before["run_id"][0]
    same = ["completion", "content_json", "output_tokens", "input_tokens", "request_id", "e2e_s"]
    assert (
        hits.select("id", *same).to_dicts()
        == before.filter(pl.col("id").is_in(["r0", "r2", "r3", "r5"]))
        .select("id", *same)
        .to_dicts()
    )
    assert hits["attempts"].to_list() == [0] * 4
    assert hits["cost_usd"].to_list() == [0.0] * 4
    assert before["cache_hit"].to_list() == [False] * 6
    attempts = pl.read_parquet(tmp_path / "out-second" / "attempts.parquet")
    assert sorted(attempts["id"].to_list()) == ["r1", "r4"]
    assert _entries(cache_dir) == 8

    manifest = json.loads((tmp_path / "out-second" / "run.json").read_text())
    paid = after.filter(~pl.col("cache_hit"))["cost_usd"].sum()
    assert paid > 0
    assert manifest["cost"]["cost_usd"] == pytest.approx(paid)
    summary = summarize(load_run(tmp_path / "out-second"))
    assert summary["e2e_s"]["count"] == 2
    assert summary["ttft_s"]["count"] == 2


def test_read_mode_uses_hits_and_stores_nothing(
    write_job: JobWriter, sim_server: Any, tmp_path: Path
) -> None:
    """mode: read answers from the cache but never adds to it."""
    server = sim_server()
    cache_dir = tmp_path / "cache"
    first = _cache_job(write_job, server.base_url, cache_dir, name="first", rows=3)
    assert run_cli(first).returncode == 0
    assert _entries(cache_dir) == 3
    reader = _cache_job(write_job, server.base_url, cache_dir, name="reader", mode="read", rows=5)
    done = run_cli(reader)
    assert done.returncode == 0, done.stderr
    assert server.stats.total_requests == 3 + 2
    assert _results(reader)["cache_hit"].to_list() == [True, True, True, False, False]
    assert _entries(cache_dir) == 3


def test_mode_off_is_the_default_and_unquoted_off_reads_as_off(
    write_job: JobWriter, sim_server: Any, tmp_path: Path
) -> None:
    """Without cache: (or with YAML's bare `off`) nothing is looked up or stored."""
    server = sim_server()
    cache_dir = tmp_path / "cache"
    job = _cache_job(write_job, server.base_url, cache_dir, name="plain", rows=2)
    text = job.read_text().replace("mode: read_write", "mode: off")
    assert "mode: off" in text
    job.write_text(text)
    for _ in range(2):
        assert run_cli(job, "--fresh").returncode == 0
    assert server.stats.total_requests == 4
    assert not cache_file(cache_dir).exists()
    assert _results(job)["cache_hit"].to_list() == [False, False]


def test_unknown_mode_is_invalid(write_job: JobWriter, tmp_path: Path) -> None:
    """A mode other than off, read, read_write is a job error (exit 2) naming the key."""
    job = write_job(extra={"cache": {"mode": "write"}})
    done = run_cli(job)
    assert done.returncode == 2
    assert "cache.mode" in done.stderr


def test_a_broken_cache_file_is_a_warning_and_the_run_goes_on(
    write_job: JobWriter, sim_server: Any, tmp_path: Path
) -> None:
    """A cache file that is not SQLite: every row is sent and recorded, the file is left as it
    was, and the warning names it; `cache info` exits 74 naming it."""
    server = sim_server()
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    garbage = b"this is not a database" * 100
    cache_file(cache_dir).write_bytes(garbage)
    job = _cache_job(write_job, server.base_url, cache_dir, name="broken", rows=4)
    done = run_cli(job)
    assert done.returncode == 0, done.stderr
    assert "batchrun.cache.unusable" in done.stderr
    assert str(cache_file(cache_dir)) in done.stderr
    assert server.stats.total_requests == 4
    assert _results(job)["status"].to_list() == ["ok"] * 4
    assert cache_file(cache_dir).read_bytes() == garbage
    info = _cache_cli("info", "--dir", str(cache_dir))
    assert info.returncode == 74
    assert str(cache_file(cache_dir)) in info.stderr


def test_two_concurrent_runs_share_one_cache(
    write_job: JobWriter, sim_server: Any, tmp_path: Path
) -> None:
    """Two processes at once on one cache, each in its own folder: both take the stored rows as
    hits, the file stays sound, and a third run finds every row there."""
    server = sim_server()
    cache_dir = tmp_path / "cache"
    # Distinct questions: two rows asking the same thing are one cache entry.
    _csv(tmp_path / "distinct.csv", [f"What is {i} squared?" for i in range(16)])
    seed = _cache_job(write_job, server.base_url, cache_dir, name="seed", data="distinct.csv")
    assert run_cli(seed, "--limit", "6").returncode == 0
    assert server.stats.total_requests == 6
    jobs = [
        _cache_job(write_job, server.base_url, cache_dir, name=f"twin{i}", data="distinct.csv")
        for i in range(2)
    ]
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(run_cli, jobs))
    assert [r.returncode for r in runs] == [0, 0], [r.stderr for r in runs]
    for job in jobs:
        results = _results(job)
        assert results["status"].to_list() == ["ok"] * 16
        assert results.filter(pl.col("cache_hit")).height >= 6
        assert set(results.filter(pl.col("cache_hit"))["id"]) >= {f"r{i}" for i in range(6)}
    sent = server.stats.total_requests
    assert 6 + 10 <= sent <= 6 + 20
    with sqlite3.connect(cache_file(cache_dir)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert _entries(cache_dir) == 16
    third = _cache_job(write_job, server.base_url, cache_dir, name="third", data="distinct.csv")
    assert run_cli(third).returncode == 0
    assert server.stats.total_requests == sent
    assert _results(third)["cache_hit"].to_list() == [True] * 16


def test_cache_info_and_clear(tmp_path: Path) -> None:
    """`cache info` counts entries and names the oldest; `clear --older-than` removes only
    older entries, `clear` all of them."""
    cache_dir = tmp_path / "cache"
    assert _entries(cache_dir) == 0
    cache = ResponseCache(cache_file(cache_dir))
    for i in range(3):
        cache.put(f"k{i}", {"completion": f"answer {i}", "output_tokens": 2})
    cache.close()
    ten_days_ago = time.time() - 10 * 86400
    with sqlite3.connect(cache_file(cache_dir)) as conn:
        conn.execute("UPDATE responses SET created = ? WHERE key = 'k0'", (ten_days_ago,))
    info = _cache_cli("info", "--dir", str(cache_dir), "--json")
    shown = json.loads(info.stdout)
    assert shown["entries"] == 3
    assert shown["size_bytes"] > 0
    assert shown["oldest"].startswith(time.strftime("%Y-%m-%d", time.gmtime(ten_days_ago)))
    done = _cache_cli("clear", "--dir", str(cache_dir), "--older-than", "7")
    assert done.returncode == 0, done.stderr
    assert "removed 1 entries" in done.stdout
    assert _entries(cache_dir) == 2
    kept = ResponseCache(cache_file(cache_dir)).get("k1")
    assert kept == {**dict.fromkeys(CACHED_COLUMNS), "completion": "answer 1", "output_tokens": 2}
    assert _cache_cli("clear", "--dir", str(cache_dir)).returncode == 0
    assert _entries(cache_dir) == 0
    assert _cache_cli("clear", "--dir", str(cache_dir), "--older-than", "0").returncode == 2


@pytest.mark.parametrize(
    "other",
    [
        ("h2", 0, "2026-10-21", "sim"),
        ("h1", 1, "2026-10-21", "sim"),
        ("h1", 0, "2023-06-01", "sim"),
        ("h1", 0, "2026-10-21", "https://api.anthropic.com"),
    ],
)
def test_key_tells_apart_request_sample_version_and_url(other: tuple[str, int, str, str]) -> None:
    """Each part of the key makes a different entry."""
    assert cache_key("h1", 0, "2026-10-21", "sim") == cache_key("h1", 0, "2026-10-21", "sim")
    assert cache_key(*other) != cache_key("h1", 0, "2026-10-21", "sim")


async def test_batch_mode_submits_only_misses_and_stores_its_results(
    write_job: JobWriter, sim_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch mode after a stream run on the same cache: the hits are rows, not batch requests;
    the batch's ok results are stored, so a stream run after it sends nothing."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    monkeypatch.setattr(batch_session, "FLUSH_ROWS", 2)  # hits reach parts as they come
    server = sim_server(batch_processing_s=0.05)
    cache_dir = tmp_path / "cache"
    stream = _cache_job(write_job, server.base_url, cache_dir, name="stream", rows=4)
    assert (await run_job(load_job(stream))).exit_code == 0
    _csv(tmp_path / "six.csv", [QUESTIONS[i] for i in range(6)])
    batch = _cache_job(write_job, server.base_url, cache_dir, name="batch", data="six.csv")
    outcome = await run_job(load_job(batch, ["request.mode=batch"]))
    assert (outcome.exit_code, outcome.sent) == (0, 2)
    results = _results(batch)
    assert results["cache_hit"].to_list() == [True] * 4 + [False] * 2
    assert results["status"].to_list() == ["ok"] * 6
    async with httpx.AsyncClient(
        base_url=server.base_url,
        headers={"x-api-key": "test-key", "anthropic-version": "2023-06-01"},
    ) as client:
        listed = (await client.get("/v1/messages/batches")).json()["data"]
    assert [sum(b["request_counts"].values()) for b in listed] == [2]
    sent = server.stats.requests_by_path.get("/v1/messages", 0)
    again = _cache_job(write_job, server.base_url, cache_dir, name="again", data="six.csv")
    repeated = await run_job(load_job(again))
    assert (repeated.exit_code, repeated.sent) == (0, 0)
    assert server.stats.requests_by_path.get("/v1/messages", 0) == sent
    assert _results(again)["cache_hit"].to_list() == [True] * 6


def test_a_relative_dir_is_the_job_files_and_cache_info_reads_it(
    write_job: JobWriter, sim_server: Any, tmp_path: Path
) -> None:
    """cache.dir: rel is beside the job file, whatever the working folder; `cache info --job`
    finds it there."""
    server = sim_server()
    job = write_job(
        rows=2,
        extra={
            "endpoint": {"base_url": server.base_url},
            "cache": {"mode": "read_write", "dir": "rel"},
        },
    )
    done = run_cli(job)
    assert done.returncode == 0, done.stderr
    assert cache_file(tmp_path / "rel").exists()
    info = _cache_cli("info", "--job", str(job), "--json")
    assert info.returncode == 0, info.stderr
    shown = json.loads(info.stdout)
    assert (shown["path"], shown["entries"]) == (str(cache_file(tmp_path / "rel")), 2)
