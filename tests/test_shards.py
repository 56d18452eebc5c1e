"""Shards: --shard K/N splits a job by a stable hash of (variant, id), each shard resumes alone in
its own folder, --shards N --local supervises them, and batchrun merge gives back the unsharded
run's folder, exactly, refusing what is not this job's shards."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from batchrun.errors import JobError, RunLockedError
from batchrun.job.schema import Job, load_job
from batchrun.load.inputs import iter_batches
from batchrun.models import RequestItem
from batchrun.record.lock import RunLock
from batchrun.report import report_command
from batchrun.run import run_job
from batchrun.shard import Shard, shard_of
from batchrun.shard.assign import owned
from batchrun.shard.local import WORST_FIRST, worst
from batchrun.shard.merge import merge_job
from tests.conftest import JobWriter, no_sleep, wait_for_checkpoint

ENV = {
    k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "JOB_COMPLETION_INDEX")
}
# Every prompt different, so the simulator's text (seeded by the body and how often it saw it)
# does not depend on the order the requests arrive in, in one process or in two.
UNIQUE = {"input": {"prompt": "{id}: {question}"}, "sim": {"seed": 7}}
SLOW = {"limits": {"concurrency": 2}, "sim": {"ttft_s": 0.05, "token_interval_s": 0.002}}
COMPARED = ["id", "sample", "input_row", "status", "completion", "stop_reason", "output_tokens"]


def batchrun(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchrun.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env or ENV,
        check=False,
    )


def _items(ids: int, variants: tuple[str, ...] = ("default",)) -> list[RequestItem]:
    return [
        RequestItem(id=f"r{i}", sample=s, messages=(), variant=v)
        for i in range(ids)
        for v in variants
        for s in range(2)
    ]


def test_assignment_is_a_partition_for_every_n() -> None:
    """Each request is in exactly one shard of N, for several N; samples of a row stay together."""
    items = _items(500, ("default", "haiku"))
    keys = {(item.variant, item.id, item.sample) for item in items}
    for count in (1, 2, 3, 7):
        seen: list[tuple[str, str, int]] = []
        for index in range(count):
            for batch in owned(Shard(index, count), iter([items[:300], items[300:]])):
                seen += [(item.variant, item.id, item.sample) for item in batch]
        assert sorted(seen) == sorted(keys)
        assert len(seen) == len(keys)
        shares = [
            sum(shard_of("default", f"r{i}", count) == k for i in range(500)) for k in range(count)
        ]
        assert min(shares) > 500 / count * 0.7  # a hash, not a range: shards are near equal


def test_assignment_is_stable_across_processes_and_runs() -> None:
    """The shard of a key is SHA-256 of (variant, id): pinned, so no host or release moves a row."""
    assert [shard_of("default", f"r{i}", 2) for i in range(8)] == [0, 0, 1, 0, 0, 1, 1, 1]
    assert [shard_of("default", f"r{i}", 3) for i in range(8)] == [2, 2, 0, 2, 0, 2, 1, 0]
    digest = hashlib.sha256(b"haiku\0r0").digest()
    assert shard_of("haiku", "r0", 7) == int.from_bytes(digest[:8], "big") % 7
    code = (
        "from batchrun.shard import shard_of; print([shard_of('v', str(i), 5) for i in range(20)])"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == str([shard_of("v", str(i), 5) for i in range(20)])


def test_shard_spec_and_job_completion_index() -> None:
    """--shard K/N is parsed and checked; --shards N reads K from JOB_COMPLETION_INDEX, clearly."""
    assert Shard.parse("1/4") == Shard(1, 4)
    assert Shard.parse("1/4").folder == "shard-1-of-4"
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(JobError, match="--shard"):
            Shard.parse(bad)
    assert Shard.from_env(3, {"JOB_COMPLETION_INDEX": "2"}) == Shard(2, 3)
    with pytest.raises(JobError, match="JOB_COMPLETION_INDEX is not set"):
        Shard.from_env(3, {})
    with pytest.raises(JobError, match="not a shard of 3"):
        Shard.from_env(3, {"JOB_COMPLETION_INDEX": "3"})


def test_worst_exit_code() -> None:
    """The exit code of the shards is the worst: a crash, I/O, signals, then fatal, capped, rows."""
    assert worst([0, 0]) == 0
    assert worst([0, 1]) == 1
    assert worst([1, 4, 0]) == 4
    assert worst([4, 3]) == 3
    assert worst([3, 143]) == 143
    assert worst([143, 74]) == 74
    assert worst([74, 137]) == 137  # killed by SIGKILL: not in the table, worst of all
    assert WORST_FIRST[-2:] == (1, 0)


def _shard_rows(job: Job, shard: Shard) -> set[str]:
    return {item.id for batch in iter_batches(job.with_shard(shard)) for item in batch}


async def test_a_shard_runs_its_rows_in_its_folder(write_job: JobWriter, tmp_path: Path) -> None:
    """--shard K/N sends only K's rows, into shard-K-of-N/, with its own run.json."""
    job = load_job(write_job(rows=30, extra=UNIQUE))
    outcome = await run_job(job.with_shard(Shard(1, 3)), sleep=no_sleep)
    assert outcome.exit_code == 0
    folder = tmp_path / "out" / "shard-1-of-3"
    assert outcome.run_dir == folder
    rows = pl.read_parquet(folder / "results.parquet")
    assert set(rows["id"]) == _shard_rows(job, Shard(1, 3))
    assert set(rows["id"]) == {f"r{i}" for i in range(30) if shard_of("default", f"r{i}", 3) == 1}
    manifest = json.loads((folder / "run.json").read_text())
    assert manifest["requests"] == rows.height == manifest["counts"]["ok"]
    assert not (tmp_path / "out" / "results.parquet").exists()


async def test_merge_is_exact_against_an_unsharded_run(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """The merge of 3 shards holds the rows of one unsharded run of the job: same keys, same
    completions (fixed seed), nothing lost or twice; merging again gives the same files."""
    path = write_job(rows=40, extra=UNIQUE)
    whole = load_job(path, [f"output.dir={tmp_path / 'whole'}"])
    assert (await run_job(whole, sleep=no_sleep)).exit_code == 0
    job = load_job(path)
    for k in range(3):
        assert (await run_job(job.with_shard(Shard(k, 3)), sleep=no_sleep)).exit_code == 0
    merged = merge_job(job)
    assert merged.exit_code == 0
    assert merged.complete
    out = tmp_path / "out"
    got = pl.read_parquet(out / "results.parquet")
    want = pl.read_parquet(tmp_path / "whole" / "results.parquet")
    assert got.height == 40
    assert got.select("id", "sample").n_unique() == 40
    assert got.select(COMPARED).equals(want.select(COMPARED))  # in input order, as compaction
    attempts = pl.read_parquet(out / "attempts.parquet")
    assert attempts.height == pl.read_parquet(tmp_path / "whole" / "attempts.parquet").height
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["counts"] == {"ok": 40, "error": 0}
    assert manifest["requests"] == 40
    assert manifest["input_rows"] == 40
    assert [s["shard"] for s in manifest["shards"]] == ["0/3", "1/3", "2/3"]
    files = {
        name: (out / name).read_bytes()
        for name in ("results.parquet", "attempts.parquet", "run.json")
    }
    assert merge_job(job).counts == merged.counts
    assert {name: (out / name).read_bytes() for name in files} == files


async def test_merge_carries_scores_when_the_shards_have_them(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """scores.parquet of every shard is merged too (the scorers write one per run folder)."""
    job = load_job(write_job(rows=10, extra=UNIQUE))
    for k in range(2):
        outcome = await run_job(job.with_shard(Shard(k, 2)), sleep=no_sleep)
        ids = pl.read_parquet(outcome.run_dir / "results.parquet")["id"]
        pl.DataFrame(
            {"variant": "default", "id": ids, "sample": 0, "scorer": "exact", "score": 1.0}
        ).write_parquet(outcome.run_dir / "scores.parquet")
    merge_job(job)
    scores = pl.read_parquet(tmp_path / "out" / "scores.parquet")
    assert sorted(scores["id"]) == sorted(f"r{i}" for i in range(10))


async def test_merge_refuses_a_foreign_shard(write_job: JobWriter, tmp_path: Path) -> None:
    """A shard folder of another job (requests sent differently), or another shard's rows under
    its name, is refused with exit 2, naming the folder; nothing is written."""
    path = write_job(rows=20, extra=UNIQUE)
    job = load_job(path)
    other = load_job(path, [f"output.dir={tmp_path / 'other'}", "request.max_tokens=32"])
    await run_job(job.with_shard(Shard(0, 2)), sleep=no_sleep)
    await run_job(other.with_shard(Shard(1, 2)), sleep=no_sleep)
    shutil.copytree(tmp_path / "other" / "shard-1-of-2", tmp_path / "out" / "shard-1-of-2")
    refused = batchrun("merge", path)
    assert refused.returncode == 2, refused.stderr
    assert "shard-1-of-2" in refused.stderr
    assert "different job" in refused.stderr
    assert not (tmp_path / "out" / "results.parquet").exists()
    shutil.rmtree(tmp_path / "out" / "shard-1-of-2")
    (tmp_path / "out" / "shard-0-of-2").rename(tmp_path / "out" / "shard-1-of-2")
    await run_job(job.with_shard(Shard(0, 2)), sleep=no_sleep)
    swapped = batchrun("merge", path)
    assert swapped.returncode == 2, swapped.stderr
    assert "would not send" in swapped.stderr
    assert "shard-1-of-2" in swapped.stderr


async def test_merge_refuses_mixed_n_and_names_missing_shards(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """Shard folders of 2 and 3 side by side are refused; a missing shard is named, and
    --partial merges what there is into a run that says it is not complete."""
    path = write_job(rows=12, extra=UNIQUE)
    job = load_job(path)
    await run_job(job.with_shard(Shard(0, 2)), sleep=no_sleep)
    missing = batchrun("merge", path)
    assert missing.returncode == 2
    assert "shard-1-of-2: missing" in missing.stderr
    partial = batchrun("merge", path, "--partial")
    assert partial.returncode == 0, partial.stderr
    manifest = json.loads((tmp_path / "out" / "run.json").read_text())
    assert manifest["complete"] is False
    assert "shard-1-of-2: missing" in manifest["message"]
    await run_job(job.with_shard(Shard(2, 3)), sleep=no_sleep)
    mixed = batchrun("merge", path)
    assert mixed.returncode == 2
    assert "2 and 3 shards" in mixed.stderr
    assert "shard-2-of-3" in mixed.stderr


def test_a_killed_shard_resumes_alone(write_job: JobWriter, tmp_path: Path) -> None:
    """kill -9 of one shard's process loses only its requests in flight; running that shard
    again finishes it, the other shard's folder untouched, and the merge has every row once."""
    path = write_job(rows=40, extra={**UNIQUE, **SLOW})
    assert batchrun(path, "--shard", "1/2").returncode == 0
    other = {p.name: p.read_bytes() for p in (tmp_path / "out" / "shard-1-of-2").glob("*.*")}
    folder = tmp_path / "out" / "shard-0-of-2"
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun.cli", str(path), "--shard", "0/2"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_checkpoint(folder, proc)
    proc.kill()
    proc.communicate(timeout=30)
    assert not (folder / "results.parquet").exists()
    unmerged = batchrun("merge", path)
    assert unmerged.returncode == 2
    assert "shard-0-of-2" in unmerged.stderr
    again = batchrun(path, "--shard", "0/2")
    assert again.returncode == 0, again.stderr
    assert {
        p.name: p.read_bytes() for p in (tmp_path / "out" / "shard-1-of-2").glob("*.*")
    } == other
    assert batchrun("merge", path).returncode == 0
    rows = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert sorted(rows["id"]) == sorted(f"r{i}" for i in range(40))


def test_shards_from_job_completion_index(write_job: JobWriter, tmp_path: Path) -> None:
    """--shards N takes K from JOB_COMPLETION_INDEX (a Kubernetes Indexed Job's pod), and says
    how to fix it when the variable is missing; validate predicts that shard's work."""
    path = write_job(rows=20, extra=UNIQUE)
    missing = batchrun(path, "--shards", "2")
    assert missing.returncode == 2
    assert "JOB_COMPLETION_INDEX is not set" in missing.stderr
    seen = batchrun("validate", path, "--shard", "1/2", "--json")
    assert seen.returncode == 0, seen.stderr
    forecast = json.loads(seen.stdout)
    mine = _shard_rows(load_job(path), Shard(1, 2))
    assert forecast["to_send"] == forecast["requests"] == len(mine)
    assert forecast["run_dir"].endswith("shard-1-of-2")
    ran = batchrun(path, "--shards", "2", env={**ENV, "JOB_COMPLETION_INDEX": "1"})
    assert ran.returncode == 0, ran.stderr
    assert set(pl.read_parquet(tmp_path / "out" / "shard-1-of-2" / "results.parquet")["id"]) == mine


def test_local_shards_end_to_end(write_job: JobWriter, tmp_path: Path) -> None:
    """--shards 2 --local runs two processes, exits with the worst code (1: a row failed for
    good) and merges them; report reads the merged folder like any other."""
    faults = {"sim": {"faults": [{"kind": "invalid_request", "match": '"r3: '}]}}
    path = write_job(rows=24, extra={**UNIQUE, **faults, "sim": {"seed": 7, **faults["sim"]}})
    done = batchrun(path, "--shards", "2", "--local")
    assert done.returncode == 1, done.stderr
    assert "merged: 23 ok, 1 error" in done.stderr
    out = tmp_path / "out"
    rows = pl.read_parquet(out / "results.parquet")
    assert rows.height == 24
    assert rows["id"].n_unique() == 24
    assert rows.filter(pl.col("status") == "error")["id"].to_list() == ["r3"]
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-0-of-2", "shard-1-of-2"]
    report = batchrun("report", out, "--json", "--no-html")
    assert report.returncode == 0
    assert json.loads(report.stdout)["state"] == "complete"


def test_local_shards_forward_a_signal_and_resume(write_job: JobWriter, tmp_path: Path) -> None:
    """SIGTERM to --local reaches each shard once: they stop cleanly (143), nothing is merged;
    running it again resumes both shards and merges."""
    path = write_job(rows=60, extra={**UNIQUE, **SLOW})
    proc = subprocess.Popen(
        [sys.executable, "-m", "batchrun.cli", str(path), "--shards", "2", "--local"],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for k in range(2):  # both shards running (a shard signalled while it starts writes nothing)
        wait_for_checkpoint(tmp_path / "out" / f"shard-{k}-of-2", proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    for k in range(2):
        manifest = json.loads((tmp_path / "out" / f"shard-{k}-of-2" / "run.json").read_text())
        assert manifest["status"] == "interrupted"
    assert not (tmp_path / "out" / "results.parquet").exists()
    again = batchrun(path, "--shards", "2", "--local")
    assert again.returncode == 0, again.stderr
    assert pl.read_parquet(tmp_path / "out" / "results.parquet")["id"].n_unique() == 60


async def test_report_reads_an_unmerged_folder(write_job: JobWriter, tmp_path: Path) -> None:
    """report on a folder of shards not merged yet reads every shard and says it is unmerged."""
    job = load_job(write_job(rows=16, extra=UNIQUE))
    for k in range(2):
        await run_job(job.with_shard(Shard(k, 2)), sleep=no_sleep)
    import io

    out = io.StringIO()
    assert report_command([tmp_path / "out"], as_json=True, html=False, out=out) == 0
    summary = json.loads(out.getvalue())
    assert summary["state"] == "unmerged"
    assert summary["outcome"]["text"] == "all 16 rows ok"


async def test_fresh_unsharded_clears_the_shard_folders(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """An unsharded --fresh starts over: the shard folders of an earlier sharded run go too (a
    later merge or report would read them), but not while a shard still holds its folder."""
    job = load_job(write_job(rows=12, extra=UNIQUE))
    for k in range(2):
        await run_job(job.with_shard(Shard(k, 2)), sleep=no_sleep)
    merge_job(job)
    out = tmp_path / "out"
    (out / "shard-0-of-2" / "notes.txt").write_text("mine")
    (out / "shard-x-of-2").mkdir()  # not a shard folder's name: not batchrun's, left alone
    with RunLock(out / "shard-1-of-2"), pytest.raises(RunLockedError, match="shard-1-of-2"):
        await run_job(job, fresh=True, sleep=no_sleep)  # a shard still running
    assert (out / "shard-0-of-2" / "results.parquet").exists()  # nothing removed before that
    assert "shards" in json.loads((out / "run.json").read_text())
    outcome = await run_job(job, fresh=True, sleep=no_sleep)
    assert outcome.exit_code == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["parts", "shard-x-of-2"]
    assert "shards" not in json.loads((out / "run.json").read_text())
    refused = batchrun("merge", job.path)
    assert refused.returncode == 2
    assert "no shard folders" in refused.stderr


def test_local_fresh_clears_another_split(write_job: JobWriter, tmp_path: Path) -> None:
    """--shards 2 --local --fresh after a 3-shard run clears the 3 shard folders (one way of
    clearing, the unsharded --fresh's), so the merge at its end finds one split."""
    path = write_job(rows=10, extra=UNIQUE)
    assert batchrun(path, "--shard", "0/3").returncode == 0
    done = batchrun(path, "--shards", "2", "--local", "--fresh")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-0-of-2", "shard-1-of-2"]
    assert pl.read_parquet(out / "results.parquet")["id"].n_unique() == 10


async def test_an_unsharded_run_on_a_merged_folder_keeps_its_origin(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """A run of the whole job resuming a merged folder (rows added to it) keeps how the folder
    was made, under merged_from, in its run.json and every later run's; a merge then refuses
    to replace the rows added since, saying so."""
    job = load_job(write_job(rows=12, extra=UNIQUE))
    for k in range(2):
        await run_job(job.with_shard(Shard(k, 2)), limit=6, sleep=no_sleep)
    merged = merge_job(job)
    out = tmp_path / "out"
    before = json.loads((out / "run.json").read_text())
    assert merged.counts == {"ok": 6, "error": 0}
    outcome = await run_job(job, sleep=no_sleep)  # the other 6 rows, in this process
    assert outcome.counts == {"ok": 12}
    record = json.loads((out / "run.json").read_text())
    assert "shards" not in record
    assert record["merged_from"] == {
        "run_id": before["run_id"],
        "finished_at": before["finished_at"],
        "shards": before["shards"],
    }
    await run_job(job, retry_errors=True, sleep=no_sleep)  # and on: still there
    assert json.loads((out / "run.json").read_text())["merged_from"] == record["merged_from"]
    refused = batchrun("merge", job.path)
    assert refused.returncode == 2
    assert "run after a merge" in refused.stderr
    assert pl.read_parquet(out / "results.parquet").height == 12


def test_local_checks_the_input_once(write_job: JobWriter, tmp_path: Path) -> None:
    """--shards 3 --local with an invalid input (a duplicate id, a missing column) says so
    once, exits 2, and starts no shard."""
    path = write_job(rows=8, extra=UNIQUE)
    data = tmp_path / "data.csv"
    data.write_text(data.read_text() + "r3,again\n")
    duplicate = batchrun(path, "--shards", "3", "--local")
    assert duplicate.returncode == 2, duplicate.stderr
    assert duplicate.stderr.count("r3") == 1, duplicate.stderr
    assert "[shard" not in duplicate.stderr
    assert not (tmp_path / "out").exists()
    missing = batchrun(path, "--shards", "3", "--local", "--set", "input.prompt={nope}")
    assert missing.returncode == 2, missing.stderr
    assert missing.stderr.count("nope") == 1, missing.stderr
    assert not (tmp_path / "out").exists()


def test_merge_finds_the_shards_of_another_day(write_job: JobWriter, tmp_path: Path) -> None:
    """With {date} in output.dir, a merge on another day than the shards' names the folder it
    looked in and the day that holds shard folders; --date merges that day's folder."""
    path = write_job(rows=10, extra={**UNIQUE, "output": {"dir": "out/{name}-{date}"}})
    for k in range(2):
        assert batchrun(path, "--shard", f"{k}/2").returncode == 0
    (today,) = (tmp_path / "out").iterdir()
    day = tmp_path / "out" / "job-2020-02-29"  # as if the shards had started on that day
    today.rename(day)
    refused = batchrun("merge", path)
    assert refused.returncode == 2
    assert f"{today}: no shard folders" in refused.stderr  # the folder it looked in
    assert "the folder of 2020-02-29: merge with --date 2020-02-29" in refused.stderr
    merged = batchrun("merge", path, "--date", "2020-02-29")
    assert merged.returncode == 0, merged.stderr
    assert pl.read_parquet(day / "results.parquet")["id"].n_unique() == 10
    bad = batchrun("merge", path, "--date", "29.02.2020")
    assert bad.returncode == 2
    assert "YYYY-MM-DD" in bad.stderr
