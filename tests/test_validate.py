"""`batchrun validate`: the run's checks before its first request, and what the run would do.

Every refusal is compared with the run's own (same exit code, same message); every prediction
with what a run then does. Validate sends nothing and writes nothing in the run folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.batch.entries import make_entry
from batchrun.batch.state import BatchRecord, BatchState, save_state, write_batch_files
from batchrun.cli import main
from batchrun.job.schema import load_job
from batchrun.load.inputs import iter_batches
from batchrun.record.lock import RunLock
from batchrun.record.parquet import ResultsWriter
from batchrun.sim import SimServer
from tests.conftest import JobWriter, run_cli, stored_result

T0 = datetime(2026, 1, 2, tzinfo=UTC)
StartSim = Callable[..., SimServer]


@pytest.fixture(autouse=True)
def _no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """No API key unless a test sets one: base_url sim needs none."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every entry under ``root`` with its size and modification time, to see any write."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def _cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _predict(capsys: pytest.CaptureFixture[str], job: Path, *args: str) -> dict[str, Any]:
    code, out, err = _cli(capsys, "validate", job, "--json", *args)
    assert code == 0, err
    prediction: dict[str, Any] = json.loads(out)
    return prediction


def _same_refusal(capsys: pytest.CaptureFixture[str], job: Path, *args: str, code: int) -> str:
    """validate and the run refuse ``job`` alike: exit ``code``, one message; returns it.
    Validate changes nothing in the job's folder (the run may: its lock file)."""
    before = _tree(job.parent)
    got, out, err = _cli(capsys, "validate", job, *args)
    assert (got, out) == (code, ""), err
    assert _tree(job.parent) == before
    run_code, _, run_err = _cli(capsys, job, *args)
    assert run_code == code, run_err
    assert err.strip() == run_err.strip().splitlines()[-1]
    return err


def _stored(run_dir: Path, *rows: dict[str, Any]) -> None:
    """A run folder holding ``rows``, written as a run writes them (no lock file)."""
    writer = ResultsWriter(run_dir)
    for row in rows:
        writer.add(row, [])
    writer.finalize()


# --- what the run would do -------------------------------------------------------------------


def test_validate_of_the_example_job_predicts_a_first_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """jobs/eval.yaml from the repository root, in a process of its own: every row to send,
    tokens, and the cost in both modes (its run folder elsewhere, so it is a first run)."""
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    out = f"output.dir={tmp_path / 'eval'}"
    done = run_cli(Path("validate"), "jobs/eval.yaml", "--set", out, env=env)
    assert done.returncode == 0, done.stderr
    rows = pl.read_csv(root / "jobs" / "data" / "eval.csv").height
    requests = rows * 2  # two variants
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"jobs/eval.yaml: valid. {rows} input rows, {requests} requests")
    assert f"to send:    {requests} requests: {requests} new, 0 again" in done.stdout
    assert "in stream mode" in done.stdout
    assert "in batch mode" in done.stdout


# What sending needs, never loaded to validate: the HTTP client and its transport, the retry
# policy, the stream driver and the run (with them the progress line), the OpenTelemetry SDK,
# and rich (structlog loads it for an exception renderer batchrun does not use).
_SENDING = ("httpx", "aiohttp", "tenacity", "batchrun.call", "batchrun.run", "batchrun.score.judge")
_SENDING += ("opentelemetry.sdk", "rich")


def test_validate_loads_nothing_of_sending(tmp_path: Path) -> None:
    """`batchrun validate jobs/eval.yaml` (a model scorer included), in a process of its own,
    imports none of the modules only a run needs."""
    root = Path(__file__).resolve().parents[1]
    script = (
        "import json, sys\n"
        "from batchrun.cli import main\n"
        f"code = main(['validate', 'jobs/eval.yaml', '--set', 'output.dir={tmp_path}'])\n"
        "print(json.dumps([code, sorted(sys.modules)]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True
    )
    code, modules = json.loads(done.stdout.splitlines()[-1])
    assert code == 0, done.stderr
    assert "polars" in modules  # the input is read
    assert [m for m in modules if m.startswith(_SENDING)] == []


def test_a_partial_run_then_validate_shows_rows_done_and_to_send(
    write_job: JobWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After `--limit 4` of 10 rows x 2 samples: 8 done, 12 to send; the next run sends 12.
    Validate writes nothing: the run folder is the same, byte for byte, before and after."""
    job = write_job(rows=10, extra={"request": {"samples": 2}})
    code, _, err = _cli(capsys, job, "--limit", "4")
    assert code == 0, err
    before = _tree(tmp_path / "out")
    seen = _predict(capsys, job)
    assert _tree(tmp_path / "out") == before
    assert (seen["input_rows"], seen["requests"], seen["done"]) == (10, 20, 8)
    assert (seen["to_send"], seen["new"], seen["again"]) == (12, 12, 0)
    assert seen["output_tokens"] == 12 * 64  # max_tokens of each request to send
    assert seen["input_tokens"] > 0
    price = seen["price"]  # claude-sonnet-4-5 at its list price
    stream = (seen["input_tokens"] * price["input"] + 12 * 64 * price["output"]) / 1e6
    assert seen["stream_usd"] == pytest.approx(stream)
    assert seen["batch_usd"] == pytest.approx(stream / 2)
    assert _predict(capsys, job, "--limit", "6")["to_send"] == 4  # as the run would with it
    fresh = _predict(capsys, job, "--fresh")
    assert (fresh["done"], fresh["to_send"]) == (0, 20)
    code, _, err = _cli(capsys, job)
    assert code == 0, err
    results = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert results.height == 20
    assert results.filter(pl.col("run_id") != results["run_id"][0]).height == 12  # sent now
    assert _predict(capsys, job)["to_send"] == 0


def test_errors_are_sent_again_as_the_run_would(
    write_job: JobWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A transient error row is sent again; a permanent one only with --retry-errors; the
    text says which. No lock file is left behind in a folder that had none."""
    job = write_job(rows=4)
    run_dir = tmp_path / "out"
    errors = {"status": "error", "error_type": "overloaded_error", "http_status": 529}
    bad = {"status": "error", "error_type": "invalid_request_error", "http_status": 400}
    # No request_hash: rows a resume takes as they are (as an early run stored them).
    _stored(
        run_dir,
        stored_result("r0", at=T0),
        stored_result("r1", at=T0, **errors),
        stored_result("r2", at=T0, **bad),
    )
    before = _tree(run_dir)
    seen = _predict(capsys, job)
    assert (seen["done"], seen["to_send"], seen["new"], seen["again"]) == (2, 2, 1, 1)
    retry = _predict(capsys, job, "--retry-errors")
    assert (retry["done"], retry["to_send"], retry["new"], retry["again"]) == (1, 3, 1, 2)
    code, out, _ = _cli(capsys, "validate", job, "--retry-errors")
    assert code == 0
    assert "to send:    3 requests: 1 new, 2 again (their rows ended in error)" in out
    assert _tree(run_dir) == before
    assert not (run_dir / ".batchrun.lock").exists()


def test_a_model_without_a_price_has_no_cost(
    write_job: JobWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    """A model the price table lacks: tokens are estimated, the cost says it has no price."""
    job = write_job(rows=3, extra={"request": {"model": "claude-unpriced-9"}})
    seen = _predict(capsys, job)
    assert (seen["price"], seen["stream_usd"], seen["batch_usd"]) == (None, None, None)
    code, out, _ = _cli(capsys, "validate", job)
    assert code == 0
    assert "model claude-unpriced-9 has no list price" in out


@pytest.mark.parametrize(("ttl", "rate"), [("5m", "cache_write_5m"), ("1h", "cache_write_1h")])
def test_with_prompt_cache_the_ceiling_prices_input_as_cache_writes(
    write_job: JobWriter, capsys: pytest.CaptureFixture[str], ttl: str, rate: str
) -> None:
    """prompt_cache: a cache write costs more than uncached input (1.25x, 2x), so the worst
    case prices every input token as written; the text says so."""
    job = write_job(rows=3, extra={"request": {"prompt_cache": ttl}})
    seen = _predict(capsys, job)
    write = {"cache_write_5m": 2.5, "cache_write_1h": 4.0}[rate]  # claude-sonnet-5-5's, by hand
    assert seen["price"] == {"input": 2.0, "output": 10.0}
    assert seen["input_rate"] == write
    stream = (seen["input_tokens"] * write + seen["output_tokens"] * 10.0) / 1e6
    assert seen["stream_usd"] == pytest.approx(stream, abs=1e-6)
    code, out, _ = _cli(capsys, "validate", job)
    assert code == 0
    assert f"(${write:g} in as cache writes, $10 out per million tokens), input and output" in out
    plain = _predict(capsys, write_job(rows=3, name="plain"))
    assert plain["input_rate"] == 2.0


# --- refused as the run refuses them -----------------------------------------------------------


@pytest.fixture
def counting_sim(sim_server: StartSim) -> Iterator[SimServer]:
    """A simulator that no test here may send anything to."""
    server = sim_server()
    yield server
    assert server.stats.total_requests == 0


def test_a_missing_key_for_a_real_endpoint(
    write_job: JobWriter, counting_sim: SimServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """base_url a real endpoint and its key variable unset: exit 2 naming the variable, as the
    run does, and nothing reaches the endpoint."""
    job = write_job(extra={"endpoint": {"base_url": counting_sim.base_url}})
    err = _same_refusal(capsys, job, code=2)
    assert "ANTHROPIC_API_KEY is not set" in err
    api = write_job(extra={"endpoint": {"base_url": "https://api.anthropic.com"}}, name="api")
    assert "ANTHROPIC_API_KEY is not set" in _same_refusal(capsys, api, code=2)


def test_a_folder_holding_another_jobs_results(
    write_job: JobWriter,
    counting_sim: SimServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A folder whose rows another job (max_tokens changed) wrote: refused with exit 2 and the
    run's message; with --fresh, validate predicts a run from scratch (and deletes nothing)."""
    job = write_job(rows=5)
    code, _, err = _cli(capsys, job)
    assert code == 0, err
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    other = (
        "--set",
        "request.max_tokens=32",
        "--set",
        f"endpoint.base_url={counting_sim.base_url}",
    )
    err = _same_refusal(capsys, job, *other, code=2)
    assert "holds results of a different job: 5 request(s)" in err
    before = _tree(tmp_path / "out")
    fresh = _predict(capsys, job, *other, "--fresh")
    assert (fresh["done"], fresh["to_send"]) == (0, 5)
    assert _tree(tmp_path / "out") == before


def test_a_folder_another_run_holds_is_exit_75(
    write_job: JobWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run holding the folder's lock: validate exits 75 with the run's message."""
    job = write_job()
    run_dir = tmp_path / "out"
    run_dir.mkdir()
    with RunLock(run_dir):
        err = _same_refusal(capsys, job, code=75)
    assert "another batchrun run is using this run folder" in err
    assert _predict(capsys, job)["to_send"] == 6  # free again


def test_a_run_folder_entry_of_the_wrong_kind_is_exit_74(
    write_job: JobWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`parts` a file: the run could not record there; exit 74 from both."""
    job = write_job()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "parts").write_text("not a folder")
    assert "is not a folder" in _same_refusal(capsys, job, code=74)


@pytest.mark.parametrize("where", ["data.csv", "data.csv/out"], ids=["a file", "under a file"])
def test_an_output_dir_that_cannot_be_a_folder(
    write_job: JobWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    """output.dir a file, or under one: exit 2 naming output.dir, as the run says it."""
    job = write_job(extra={"output": {"dir": where}})
    assert "output.dir: cannot write the run folder" in _same_refusal(capsys, job, code=2)


def test_a_damaged_part_is_left_where_it_is(
    write_job: JobWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint part that fails its checksum: validate counts its rows as not done and
    leaves it in place (the run moves it to parts/quarantine/ under its lock)."""
    job = write_job(rows=3)
    run_dir = tmp_path / "out"
    writer = ResultsWriter(run_dir)
    writer.add(stored_result("r0", at=T0), [])
    writer.flush()
    (part,) = run_dir.glob("parts/results-*.parquet")
    part.write_bytes(part.read_bytes()[:-20] + b"\0" * 20)
    before = _tree(run_dir)
    assert _predict(capsys, job)["to_send"] == 3
    assert _tree(run_dir) == before


def test_batch_fresh_with_a_batch_still_open_is_refused(
    write_job: JobWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Batch mode: --fresh while the folder records a batch that may still run is exit 2,
    with the run's message; validate does not touch the batch state."""
    job = write_job(extra={"request": {"mode": "batch"}})
    run_dir = tmp_path / "out"
    run_dir.mkdir()
    record = BatchRecord(seq=1, count=6, bytes=100, intent_at=T0.isoformat(), status="open")
    save_state(run_dir, BatchState(records=[record]))
    err = _same_refusal(capsys, job, "--fresh", code=2)
    assert "may still be running on the API" in err


def test_batch_requests_still_in_a_batch_are_not_to_send(
    write_job: JobWriter, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Batch mode: the requests of a batch not collected yet are neither done nor to send;
    validate says how many wait in a batch, and writes nothing."""
    job_file = write_job(rows=5, extra={"request": {"mode": "batch"}})
    job = load_job(job_file)
    run_dir = tmp_path / "out"
    run_dir.mkdir()
    state = BatchState()
    items = [item for batch in iter_batches(job) for item in batch][1:3]  # r1, r2
    made = [make_entry(job, item, state.salt) for item in items]
    record = BatchRecord(seq=1, count=2, bytes=100, intent_at=T0.isoformat(), status="open")
    write_batch_files(run_dir, record, [e for e, _ in made], [w for _, w in made])
    state.records.append(record)
    save_state(run_dir, state)
    before = _tree(run_dir)
    seen = _predict(capsys, job_file)
    assert (seen["in_batches"], seen["done"], seen["to_send"]) == (2, 0, 3)
    code, out, _ = _cli(capsys, "validate", job_file)
    assert code == 0
    assert "2 still in a batch, to collect" in out
    assert _tree(run_dir) == before
