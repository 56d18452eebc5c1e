"""The run folder: checkpoint parts, compaction, resume keys and atomic writes."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.job.schema import load_job
from batchrun.record import parquet
from batchrun.record.parquet import (
    KeyHash,
    ResultsWriter,
    hash_keys,
    read_table,
    request_keys,
    resume_index,
    resume_keys,
    write_json_atomic,
)
from batchrun.record.schema import ATTEMPT_SCHEMA, RESULT_SCHEMA
from batchrun.run import run_job
from batchrun.sim import SimServer
from tests.conftest import JobWriter, no_sleep, stored_result

T0 = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def collide(keys: list[str]) -> pl.Expr:
    return pl.col(keys[0]).is_null().cast(pl.UInt64).alias("_hash")  # 0 for every row


@pytest.fixture(params=["hash", "colliding hash"])
def key_hash(request: pytest.FixtureRequest) -> KeyHash:
    """Rows are matched by a hash of their key first; with a hash under which every key
    collides, the keys themselves must still decide which rows are the same."""
    return collide if request.param == "colliding hash" else hash_keys


def _result(id_: str, sample: int = 0, status: str = "ok", **extra: Any) -> dict[str, Any]:
    return stored_result(id_, sample, status, at=T0, **{"chunk_offsets_s": [0.1, 0.2], **extra})


def _resumed(run_dir: Path, key_hash: KeyHash = hash_keys) -> set[tuple[str, int]]:
    """The (id, sample) keys ``resume_index`` finds in ``run_dir``."""
    return set(resume_index(run_dir, key_hash=key_hash).select("id", "sample").iter_rows())


def _unchecked(name: str) -> str:
    """A part's name without its checksum (``results-000001.1a2b3c4d.parquet``)."""
    return re.sub(r"\.[0-9a-f]{8}\.parquet$", ".parquet", name)


def _attempt(id_: str, number: int = 1, run_id: str = "r1") -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(ATTEMPT_SCHEMA)
    row.update(
        run_id=run_id,
        id=id_,
        sample=0,
        attempt=number,
        outcome="ok",
        started_at=T0,
        finished_at=T0,
        backoff_s=0.0,
    )
    return row


def test_parts_are_written_and_compacted_with_the_contract_schema(tmp_path: Path) -> None:
    """Rows flushed in two parts end up, once each, in final files with the exact schema."""
    writer = ResultsWriter(tmp_path)
    writer.add(_result("a", completion="x"), [_attempt("a")])
    writer.flush()
    writer.add(
        _result("b", status="error", error_type="overloaded_error"),
        [_attempt("b", 1), _attempt("b", 2)],
    )
    writer.flush()
    assert sorted(_unchecked(p.name) for p in (tmp_path / "parts").iterdir()) == [
        "attempts-000001.parquet",
        "attempts-000002.parquet",
        "results-000001.parquet",
        "results-000002.parquet",
    ]
    counts = writer.finalize()
    assert counts == {"ok": 1, "error": 1}
    results = pl.read_parquet(tmp_path / "results.parquet")
    assert results.schema == pl.Schema(RESULT_SCHEMA)
    assert results["id"].to_list() == ["a", "b"]
    assert results["started_at"][0] == T0
    assert results["chunk_offsets_s"][0].to_list() == [0.1, 0.2]
    attempts = pl.read_parquet(tmp_path / "attempts.parquet")
    assert attempts.schema == pl.Schema(ATTEMPT_SCHEMA)
    assert attempts.height == 3
    assert list((tmp_path / "parts").iterdir()) == []


def test_a_resumed_run_adds_to_the_final_files_without_duplicates(
    tmp_path: Path, key_hash: KeyHash
) -> None:
    """Compaction merges earlier final files with new parts; a re-run row replaces its old one."""
    first = ResultsWriter(tmp_path, key_hash=key_hash)
    first.add(_result("a"), [_attempt("a")])
    first.add(_result("b", status="error"), [_attempt("b")])
    first.finalize()
    assert _resumed(tmp_path, key_hash) == {("a", 0), ("b", 0)}
    second = ResultsWriter(tmp_path, key_hash=key_hash)
    second.add(_result("b", run_id="r2"), [_attempt("b", run_id="r2")])
    second.add(_result("c", run_id="r2"), [_attempt("c", run_id="r2")])
    assert second.finalize() == {"ok": 3}
    table = read_table(tmp_path, "results", key_hash=key_hash)
    assert table["id"].to_list() == ["a", "b", "c"]
    assert table.filter(pl.col("id") == "b")["run_id"].to_list() == ["r2"]
    assert pl.read_parquet(tmp_path / "attempts.parquet").height == 4


def test_checkpoints_are_readable_before_the_end(tmp_path: Path) -> None:
    """A run that dies after a flush leaves its finished rows readable from the parts."""
    writer = ResultsWriter(tmp_path)
    writer.add(_result("a"), [_attempt("a")])
    writer.flush()
    writer.add(_result("b"), [_attempt("b")])  # buffered only: lost with the process
    assert _resumed(tmp_path) == {("a", 0)}


def test_part_numbers_continue_after_a_restart(tmp_path: Path) -> None:
    """A new writer on a folder with parts never overwrites them."""
    ResultsWriter(tmp_path).flush()
    writer = ResultsWriter(tmp_path)
    writer.add(_result("a"), [])
    writer.flush()
    again = ResultsWriter(tmp_path)
    again.add(_result("b"), [])
    again.flush()
    assert sorted(_unchecked(p.name) for p in (tmp_path / "parts").iterdir()) == [
        "results-000001.parquet",
        "results-000002.parquet",
    ]


def test_leftover_temporary_files_are_not_read(tmp_path: Path) -> None:
    """A half-written part (a temporary name) is never taken for data."""
    writer = ResultsWriter(tmp_path)
    writer.add(_result("a"), [])
    writer.flush()
    (tmp_path / "parts" / ".results-000002.parquet.tmp").write_bytes(b"PAR1 torn")
    assert _resumed(tmp_path) == {("a", 0)}


def test_temporary_files_a_killed_run_left_are_removed(tmp_path: Path) -> None:
    """A new writer removes the temporary files of the files it writes, and no other."""
    (tmp_path / "parts").mkdir()
    leftovers = [
        tmp_path / ".results.parquet.k2j4h5.batchrun-tmp",
        tmp_path / ".run.json.a8d7f6.batchrun-tmp",
        tmp_path / "parts" / ".attempts-000003.q1w2e3.batchrun-tmp",
    ]
    others = [tmp_path / ".report.html.z9x8c7.batchrun-tmp", tmp_path / ".mine.tmp"]
    for path in leftovers + others:
        path.write_bytes(b"PAR1 torn")
    ResultsWriter(tmp_path)
    assert [path.exists() for path in leftovers + others] == [False, False, False, True, True]


def test_an_empty_run_folder_has_empty_tables(tmp_path: Path) -> None:
    """Reading a folder with no results gives an empty table with the contract's schema."""
    assert read_table(tmp_path, "results").schema == pl.Schema(RESULT_SCHEMA)
    assert _resumed(tmp_path) == set()


def test_the_resume_index_holds_keys_status_and_request_hashes(
    tmp_path: Path, key_hash: KeyHash
) -> None:
    """One row per key, the last written: its key hash as ``resume_keys`` computes it, whether
    it is ok, and its request hash as ``request_keys`` hashes it (null where it has none)."""
    writer = ResultsWriter(tmp_path)
    writer.add(_result("a", request_hash="ab" * 32), [])
    writer.add(_result("b", status="error"), [])
    writer.flush()
    writer.add(_result("a", status="error", request_hash="cd" * 32), [])
    writer.add(_result("a", sample=1, request_hash="ab" * 32), [])
    writer.flush()
    index = resume_index(tmp_path, key_hash=key_hash).sort("id", "sample")
    assert index.select("id", "sample", "ok").rows() == [
        ("a", 0, False),
        ("a", 1, True),
        ("b", 0, False),
    ]
    assert index["request"].to_list() == [*request_keys(["cd" * 32, "ab" * 32]), None]
    assert (
        index["_hash"].to_list()
        == resume_keys(["default"] * 3, ["a", "a", "b"], [0, 1, 0], key_hash=key_hash)[
            "_hash"
        ].to_list()
    )


def test_json_is_written_atomically(tmp_path: Path) -> None:
    """write_json_atomic leaves only the final file, with datetimes as ISO strings."""
    write_json_atomic(tmp_path / "run.json", {"at": T0, "path": tmp_path})
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
    assert '"at": "2026-01-02T03:04:05.123456+00:00"' in (tmp_path / "run.json").read_text()


def test_many_small_parts_are_merged_keeping_later_rows_winning(
    tmp_path: Path, key_hash: KeyHash
) -> None:
    """Past MERGE_AFTER_PARTS flushes the parts are merged; a row written later still wins."""
    from batchrun.record.parquet import MERGE_AFTER_PARTS

    writer = ResultsWriter(tmp_path)
    for i in range(MERGE_AFTER_PARTS + 5):
        writer.add(_result(f"r{i % 10}", run_id=f"run{i}"), [_attempt(f"r{i % 10}", i + 1)])
        writer.flush()
    parts = list((tmp_path / "parts").glob("results-*.parquet"))
    assert len(parts) < MERGE_AFTER_PARTS
    assert any(".merged" in p.name for p in parts)
    table = read_table(tmp_path, "results", key_hash=key_hash)
    assert table.height == 10
    last = MERGE_AFTER_PARTS + 4
    assert table.filter(pl.col("id") == f"r{last % 10}")["run_id"].to_list() == [f"run{last}"]
    # the last write of each key, in the order they were written
    assert table["run_id"].to_list() == [f"run{i}" for i in range(last - 9, last + 1)]
    assert read_table(tmp_path, "attempts", key_hash=key_hash).height == MERGE_AFTER_PARTS + 5


def test_lone_surrogates_from_the_stream_are_replaced(tmp_path: Path) -> None:
    """A completion holding a lone surrogate (valid JSON, not UTF-8) is written as U+FFFD."""
    from batchrun.clock import Clock
    from batchrun.models import Attempt, Completion, RequestItem
    from batchrun.record.schema import result_row

    clock = Clock()
    final = Attempt(
        sent_at=clock.now(),
        ended_at=clock.now(),
        completion=Completion(text="a\ud800b", stop_reason="end_turn"),
    )
    row = result_row(
        run_id="r",
        item=RequestItem("x", 0, ()),
        model="m",
        api="messages",
        final=final,
        error=None,
        attempts=1,
        first_sent=final.sent_at,
        queue_s=0.0,
        retry_wait_s=0.0,
        trace_id=None,
        request_hash="h",
        clock=clock,
    )
    writer = ResultsWriter(tmp_path)
    writer.add(row, [])
    writer.finalize()
    assert pl.read_parquet(tmp_path / "results.parquet")["completion"].to_list() == ["a\ufffdb"]


def test_a_run_folder_whose_final_files_are_empty_compacts_again(tmp_path: Path) -> None:
    """A run that finished nothing leaves empty final files; the next run compacts over them."""
    assert ResultsWriter(tmp_path).finalize() == {}
    writer = ResultsWriter(tmp_path)
    assert writer.finalize() == {}
    writer.add(_result("a"), [_attempt("a")])
    assert writer.finalize() == {"ok": 1}
    assert read_table(tmp_path, "results")["id"].to_list() == ["a"]


# --- input_row and the order of results.parquet --------------------------------------------


@pytest.mark.parametrize("sort_rows", [1_000, 3], ids=["at once", "by ranges"])
def test_compaction_orders_results_by_input_row_then_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sort_rows: int
) -> None:
    """results.parquet comes out ordered by input_row, then sample, whatever order the parts
    hold (sorted at once, or a range of rows at a time); a later row still wins its key."""
    monkeypatch.setattr(parquet, "SORT_ROWS", sort_rows)
    writer = ResultsWriter(tmp_path)
    done = [(5, 1), (0, 1), (9, 0), (5, 0), (2, 0), (0, 0), (7, 1), (9, 1), (2, 1), (7, 0)]
    for n, (row, sample) in enumerate(done):
        writer.add(_result(f"q{row}", sample, input_row=row, status="error"), [])
        if n % 3 == 2:
            writer.flush()
    writer.add(_result("q5", 1, input_row=5, completion="again"), [])  # resent: wins
    writer.finalize()
    results = pl.read_parquet(tmp_path / "results.parquet")
    assert results.select("input_row", "sample").rows() == sorted(done)
    assert results.filter(pl.col("id") == "q5")["status"].to_list() == ["error", "ok"]
    assert results["id"].to_list() == [f"q{r}" for r, _ in sorted(done)]
    assert not list(tmp_path.glob(".*"))  # no temporary file of a range is left


def test_rows_from_before_input_row_go_last_in_stored_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder written before input_row existed resumes: its rows read as null, and
    compaction puts them after the rows that have one, in the order they were stored."""
    monkeypatch.setattr(parquet, "SORT_ROWS", 2)
    old = [_result(i) for i in ("z", "a", "m")]
    pl.DataFrame(old, schema=RESULT_SCHEMA, orient="row").drop("input_row").write_parquet(
        tmp_path / "results.parquet"
    )
    writer = ResultsWriter(tmp_path)
    for row in (4, 3, 1):
        writer.add(_result(f"q{row}", input_row=row), [])
    writer.finalize()
    results = pl.read_parquet(tmp_path / "results.parquet")
    assert results.schema == pl.Schema(RESULT_SCHEMA)
    assert results.select("id", "input_row").rows() == [
        ("q1", 1),
        ("q3", 3),
        ("q4", 4),
        ("z", None),
        ("a", None),
        ("m", None),
    ]


async def test_a_concurrent_run_is_stored_in_input_order(write_job: JobWriter) -> None:
    """A run with 8 streams at once, whose answers end out of order (attempts.parquet keeps
    that order), stores results.parquet by input_row, then sample: row i is input row i."""
    sim = {"token_interval_s": 0.001, "min_output_tokens": 1, "max_output_tokens": 60}
    job = load_job(
        write_job(
            rows=30,
            extra={"request": {"samples": 2}, "limits": {"concurrency": 8}, "sim": sim},
        )
    )
    outcome = await run_job(job, sleep=no_sleep)
    assert outcome.exit_code == 0
    finished = pl.read_parquet(outcome.run_dir / "attempts.parquet")
    expected = [(f"r{row}", row, sample) for row in range(30) for sample in range(2)]
    assert finished.select("id", "input_row", "sample").rows() != expected  # out of order
    results = pl.read_parquet(outcome.run_dir / "results.parquet")
    assert results.select("id", "input_row", "sample").rows() == expected


async def test_batch_mode_records_input_row(
    write_job: JobWriter, sim_server: Callable[..., SimServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch mode carries each request's input row through the batch into both tables."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    server = sim_server(batch_processing_s=0.05)
    job = load_job(
        write_job(
            rows=7,
            extra={"endpoint": {"base_url": server.base_url}, "request": {"mode": "batch"}},
        )
    )
    outcome = await run_job(job, sleep=no_sleep)
    assert outcome.exit_code == 0
    for table in ("results", "attempts"):
        stored = pl.read_parquet(outcome.run_dir / f"{table}.parquet").sort("id")
        assert stored.select("id", "input_row").rows() == [(f"r{i}", i) for i in range(7)]
