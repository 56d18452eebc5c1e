"""Stage 4: the run folder. Parquet checkpoints while the run goes on, final files at the end.

Finished requests are buffered and written as numbered part files under ``parts/`` (each written
to a temporary name, fsynced and renamed, so a crash never leaves a half-written part under a
real name). ``finalize`` compacts the earlier final files and the parts into ``results.parquet``
and ``attempts.parquet``, one row per (id, sample), atomically. This is the only module that
writes Parquet; it knows nothing of HTTP or of the job file's shape.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl
import structlog

from batchrun.clock import Clock
from batchrun.errors import AttemptError
from batchrun.models import Attempt, RequestItem
from batchrun.record.keyhash import seen_twice

__all__ = [
    "ATTEMPT_SCHEMA",
    "RESULT_SCHEMA",
    "ResultsWriter",
    "attempt_row",
    "read_table",
    "request_keys",
    "result_row",
    "resume_index",
    "resume_keys",
    "scan_table",
    "write_json_atomic",
]

_TS = pl.Datetime("us", "UTC")

RESULT_SCHEMA: Mapping[str, pl.DataType | type[pl.DataType]] = {
    "run_id": pl.String,
    "id": pl.String,
    "sample": pl.Int64,
    "model": pl.String,
    "api": pl.String,
    "status": pl.String,
    "completion": pl.String,
    "content_json": pl.String,
    "stop_reason": pl.String,
    "stop_sequence": pl.String,
    "input_tokens": pl.Int64,
    "output_tokens": pl.Int64,
    "error_type": pl.String,
    "error_message": pl.String,
    "http_status": pl.Int64,
    "attempts": pl.Int64,
    "request_id": pl.String,
    "started_at": _TS,
    "finished_at": _TS,
    "queue_s": pl.Float64,
    "retry_wait_s": pl.Float64,
    "ttft_s": pl.Float64,
    "e2e_s": pl.Float64,
    "tpot_s": pl.Float64,
    "output_tokens_per_s": pl.Float64,
    "chunk_offsets_s": pl.List(pl.Float64),
    "trace_id": pl.String,
    # An addition to the contract: sha256 of the request as sent (API path and JSON body), so a
    # resumed run can tell that the job still asks for the same thing.
    "request_hash": pl.String,
}

ATTEMPT_SCHEMA: Mapping[str, pl.DataType | type[pl.DataType]] = {
    "run_id": pl.String,
    "id": pl.String,
    "sample": pl.Int64,
    "attempt": pl.Int64,
    "outcome": pl.String,
    "http_status": pl.Int64,
    "request_id": pl.String,
    "started_at": _TS,
    "finished_at": _TS,
    "backoff_s": pl.Float64,
    "ttft_s": pl.Float64,
    "output_tokens_seen": pl.Int64,
    "retry_after_s": pl.Float64,
    "error_message": pl.String,
}

log = structlog.get_logger()

# Row groups small enough that reading a file back streams in bounded memory: polars' default
# (~260k rows) made compacting a million rows take ~900 MB, 10k rows takes ~200 MB.
ROW_GROUP_ROWS = 10_000
MERGE_AFTER_PARTS = 64  # small checkpoint parts per table before they are merged into one
_SEED = 0x6B657973  # of the key hashes that find a key written twice, or a request done
_REQUEST_SEED = 0x72657175  # of the request hashes a resume compares, 8 bytes a row

_TABLES = {"results": RESULT_SCHEMA, "attempts": ATTEMPT_SCHEMA}
_KEYS = {"results": ["id", "sample"], "attempts": ["run_id", "id", "sample", "attempt"]}


class ResultsWriter:
    """Buffers rows and writes them as checkpoint parts; compacts everything at the end."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.parts_dir = run_dir / "parts"
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self._buffers: dict[str, list[dict[str, Any]]] = {name: [] for name in _TABLES}
        self._seq = 1 + max((_part_seq(p) for p in self.parts_dir.glob("*.parquet")), default=0)

    def add(self, result: dict[str, Any], attempts: Iterable[dict[str, Any]]) -> None:
        """Queue one finished request: its result row and every attempt row."""
        self._buffers["attempts"].extend(attempts)
        self._buffers["results"].append(result)

    def add_attempts(self, attempts: Iterable[dict[str, Any]]) -> None:
        """Queue attempt rows of a request that has no result (the run aborted under it)."""
        self._buffers["attempts"].extend(attempts)

    @property
    def pending(self) -> int:
        return len(self._buffers["results"]) + len(self._buffers["attempts"])

    def take(self) -> dict[str, list[dict[str, Any]]]:
        """Hand over the buffered rows (to be written off the event loop by ``write_part``)."""
        taken, self._buffers = self._buffers, {name: [] for name in _TABLES}
        return taken

    def write_part(self, rows: dict[str, list[dict[str, Any]]]) -> None:
        """Write one checkpoint: attempts first, so a results part never lacks its attempts."""
        seq = self._next_seq()
        for name in ("attempts", "results"):
            if rows[name]:
                frame = pl.DataFrame(rows[name], schema=_TABLES[name], orient="row")
                _write_parquet_atomic(frame, self.parts_dir / f"{name}-{seq:06d}.parquet")
        self._merge_small_parts()

    def _next_seq(self) -> int:
        seq = self._seq
        self._seq += 1
        return seq

    def _merge_small_parts(self) -> None:
        """Fold many small checkpoints into one, so frequent flushes don't pile up files.

        The merged part takes a new, higher number, so the later-wins order is kept; a crash
        between writing it and deleting the small parts only leaves duplicates, which reading
        removes.
        """
        for name in ("attempts", "results"):
            small = [p for p in self.parts_dir.glob(f"{name}-*.parquet") if ".merged" not in p.name]
            if len(small) < MERGE_AFTER_PARTS:
                continue
            small.sort(key=_part_seq)
            frame = pl.concat([pl.scan_parquet(p) for p in small], how="vertical")
            target = self.parts_dir / f"{name}-{self._next_seq():06d}.merged.parquet"
            _write_parquet_atomic(frame, target)  # streamed, never read into memory whole
            for part in small:
                part.unlink()

    def flush(self) -> None:
        self.write_part(self.take())

    def finalize(self) -> dict[str, int]:
        """Compact earlier final files and all parts into the final files; counts by status.

        The compaction streams (scan, deduplicate, sink), so a run of a million rows is never
        held in memory whole.
        """
        self.flush()
        for name in _TABLES:
            _write_parquet_atomic(scan_table(self.run_dir, name), self.run_dir / f"{name}.parquet")
        for part in self.parts_dir.glob("*.parquet"):
            part.unlink()
        counts = (
            pl.scan_parquet(self.run_dir / "results.parquet")
            .group_by("status")
            .len()
            .collect(engine="streaming")
        )
        return dict(zip(counts["status"].to_list(), counts["len"].to_list(), strict=True))


def read_table(run_dir: Path, name: str) -> pl.DataFrame:
    """A table as it stands: the last final file plus every checkpoint part, deduplicated."""
    return scan_table(run_dir, name).collect()


def scan_table(run_dir: Path, name: str) -> pl.LazyFrame:
    """:func:`read_table`, lazily. Later parts win over earlier ones and over the final file,
    so a request re-run on resume replaces its earlier row; order is otherwise kept.

    Finding the rows to drop holds 8 bytes a row (a hash of each row's key), not the keys: a
    million keys grouped took ~150 MB. Only rows whose key hash is seen twice are read again,
    with their keys, to pick the last of each key.
    """
    schema = _TABLES[name]
    sources = [run_dir / f"{name}.parquet"]
    sources += sorted((run_dir / "parts").glob(f"{name}-*.parquet"), key=_part_seq)
    frames = [frame for path in sources if (frame := _scan_part(path, schema)) is not None]
    if not frames:
        return pl.LazyFrame(schema=schema)
    combined = pl.concat(frames, how="vertical")
    dropped = _superseded(frames, combined, _KEYS[name])
    if dropped.is_empty():
        return combined  # no key twice: the common case, streamed as it is
    return (
        combined.with_row_index("_pos")
        .filter(~pl.col("_pos").is_in(dropped.implode()))
        .drop("_pos")
    )


def _key_hash(keys: list[str]) -> pl.Expr:
    return pl.struct(keys).hash(_SEED).alias("_hash")


def _superseded(frames: list[pl.LazyFrame], combined: pl.LazyFrame, keys: list[str]) -> pl.Series:
    """Positions in ``combined`` (``frames`` one after another) of rows a later row replaces."""
    hashes = pl.concat([f.select(_key_hash(keys)).collect() for f in frames])["_hash"].sort()
    twice = seen_twice(hashes)
    del hashes
    if twice.is_empty():
        return pl.Series("_pos", [], dtype=pl.get_index_type())
    suspects = (
        combined.with_row_index("_pos")
        .filter(_key_hash(keys).is_in(twice.implode()))
        .select(*keys, "_pos")
        .collect(engine="streaming")
    )
    last = suspects.group_by(keys).agg(pl.col("_pos").max())["_pos"]
    return suspects["_pos"].filter(~suspects["_pos"].is_in(last.implode()))


def _scan_part(path: Path, schema: Mapping[str, Any]) -> pl.LazyFrame | None:
    """A part or final file, or ``None`` when it is absent or unreadable (torn by a crash)."""
    if not path.exists():
        return None
    try:
        columns = pl.read_parquet_schema(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        log.warning("batchrun.results.unreadable_part", path=str(path), error=str(exc)[:200])
        return None
    # Files written before a column was added lack it: add it as nulls.
    missing = [
        pl.lit(None, dtype=dtype).alias(col) for col, dtype in schema.items() if col not in columns
    ]
    return pl.scan_parquet(path).with_columns(missing).select(list(schema))


def resume_index(run_dir: Path) -> pl.DataFrame:
    """Every (id, sample) with a result in this run folder, keyed as :func:`resume_keys` keys
    it (``_hash``, ``id``, ``sample``), with ``ok`` (its status is ok) and ``request``, its
    ``request_hash`` as :func:`request_keys` hashes it (null where it has none).

    About 40 bytes a row, where a dict of Python tuples took ~800: read streaming, only these
    columns.
    """
    stored = pl.col("request_hash")
    return (
        scan_table(run_dir, "results")
        .select(
            _key_hash(_KEYS["results"]),
            "id",
            "sample",
            (pl.col("status") == "ok").fill_null(False).alias("ok"),
            pl.when(stored.is_not_null()).then(stored.hash(_REQUEST_SEED)).alias("request"),
        )
        .collect(engine="streaming")
    )


def resume_keys(ids: list[str], samples: list[int]) -> pl.DataFrame:
    """(id, sample) pairs with the 64-bit hash of each (``_hash``) that :func:`resume_index`
    gives the same pair, for looking requests up in it."""
    keys = pl.DataFrame(
        {"id": ids, "sample": samples}, schema={"id": pl.String, "sample": pl.Int64}
    )
    return keys.select(_key_hash(_KEYS["results"]), "id", "sample")


def request_keys(digests: list[str]) -> pl.Series:
    """The 64-bit hashes of request hashes (hex sha256) that ``resume_index`` compares by."""
    return pl.Series("request", digests, dtype=pl.String).hash(_REQUEST_SEED)


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    text = json.dumps(payload, indent=2, default=_json_default, ensure_ascii=False) + "\n"
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _write_parquet_atomic(frame: pl.DataFrame | pl.LazyFrame, path: Path) -> None:
    """Write ``frame`` (a LazyFrame streamed, never collected) under a temporary name, then
    commit it."""
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(frame, pl.LazyFrame):
        frame.sink_parquet(tmp, row_group_size=ROW_GROUP_ROWS)
    else:
        frame.write_parquet(tmp, row_group_size=ROW_GROUP_ROWS)
    _commit(tmp, path)


def _commit(tmp: Path, path: Path) -> None:
    """Make a fully written temporary file durable under its real name."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _part_seq(path: Path) -> int:
    match = re.search(r"-(\d+)", path.name)
    return int(match.group(1)) if match else 0


_SURROGATE = re.compile("[\ud800-\udfff]")


def _utf8(text: str | None) -> str | None:
    """Text Parquet can hold: a lone UTF-16 surrogate (valid JSON, invalid UTF-8) becomes U+FFFD."""
    return _SURROGATE.sub("\ufffd", text) if text is not None else None


def attempt_row(
    run_id: str, item: RequestItem, number: int, backoff_s: float, a: Attempt, clock: Clock
) -> dict[str, Any]:
    """The attempts.parquet row of one attempt."""
    err = a.error
    return {
        "run_id": run_id,
        "id": item.id,
        "sample": item.sample,
        "attempt": number,
        "outcome": "ok" if err is None else err.error_type,
        "http_status": a.http_status,
        "request_id": a.request_id,
        "started_at": clock.wall(a.sent_at),
        "finished_at": clock.wall(a.ended_at),
        "backoff_s": backoff_s,
        "ttft_s": a.ttft_s,
        "output_tokens_seen": a.output_tokens_seen,
        "retry_after_s": err.retry_after if err is not None else None,
        "error_message": _utf8(err.message) if err is not None else None,
    }


def result_row(
    *,
    run_id: str,
    item: RequestItem,
    model: str,
    api: str,
    final: Attempt,
    error: AttemptError | None,
    attempts: int,
    first_sent: float,
    queue_s: float,
    retry_wait_s: float,
    trace_id: str | None,
    request_hash: str,
    clock: Clock,
) -> dict[str, Any]:
    """The results.parquet row of one request, from its last attempt; timing from the
    successful attempt only, so a failed attempt's text or timing never leaks in."""
    row: dict[str, Any] = dict.fromkeys(RESULT_SCHEMA)
    row.update(
        run_id=run_id,
        id=item.id,
        sample=item.sample,
        model=model,
        api=api,
        status="ok" if error is None else "error",
        error_type=None if error is None else error.error_type,
        error_message=None if error is None else _utf8(error.message),
        http_status=final.http_status,
        attempts=attempts,
        request_id=final.request_id,
        started_at=clock.wall(first_sent),
        finished_at=clock.wall(final.ended_at),
        queue_s=max(0.0, queue_s),
        retry_wait_s=retry_wait_s,
        trace_id=trace_id,
        request_hash=request_hash,
    )
    done = final.completion
    if error is None and done is not None:
        offsets = final.chunk_offsets
        out = done.output_tokens
        e2e = final.e2e_s
        row.update(
            completion=_utf8(done.text),
            content_json=_utf8(done.content_json),
            stop_reason=done.stop_reason,
            stop_sequence=_utf8(done.stop_sequence),
            input_tokens=done.input_tokens,
            output_tokens=out,
            ttft_s=final.ttft_s,
            e2e_s=e2e,
            chunk_offsets_s=offsets,
            tpot_s=(offsets[-1] - offsets[0]) / (out - 1)
            if out is not None and out >= 2 and offsets
            else None,
            output_tokens_per_s=out / e2e if out is not None and e2e > 0 else None,
        )
    return row
