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
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

__all__ = [
    "ATTEMPT_SCHEMA",
    "RESULT_SCHEMA",
    "ResultsWriter",
    "done_keys",
    "read_table",
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

_TABLES = {"results": RESULT_SCHEMA, "attempts": ATTEMPT_SCHEMA}
_KEYS = {"results": ["id", "sample"], "attempts": ["run_id", "id", "sample", "attempt"]}


class ResultsWriter:
    """Buffers rows and writes them as checkpoint parts; compacts everything at the end."""

    def __init__(self, run_dir: Path, *, flush_rows: int = 500) -> None:
        self.run_dir = run_dir
        self.parts_dir = run_dir / "parts"
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        self.flush_rows = flush_rows
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
        return len(self._buffers["results"])

    def should_flush(self) -> bool:
        return self.pending >= self.flush_rows

    def take(self) -> dict[str, list[dict[str, Any]]]:
        """Hand over the buffered rows (to be written off the event loop by ``write_part``)."""
        taken, self._buffers = self._buffers, {name: [] for name in _TABLES}
        return taken

    def write_part(self, rows: dict[str, list[dict[str, Any]]]) -> None:
        """Write one checkpoint: attempts first, so a results part never lacks its attempts."""
        seq = self._seq
        self._seq += 1
        for name in ("attempts", "results"):
            if rows[name]:
                frame = pl.DataFrame(rows[name], schema=_TABLES[name], orient="row")
                _write_parquet_atomic(frame, self.parts_dir / f"{name}-{seq:06d}.parquet")

    def flush(self) -> None:
        self.write_part(self.take())

    def finalize(self) -> dict[str, int]:
        """Compact earlier final files and all parts into the final files; counts by status."""
        self.flush()
        for name in _TABLES:
            frame = read_table(self.run_dir, name)
            _write_parquet_atomic(frame, self.run_dir / f"{name}.parquet")
        for part in self.parts_dir.glob("*.parquet"):
            part.unlink()
        results = pl.read_parquet(self.run_dir / "results.parquet", columns=["status"])
        counts = results.group_by("status").len()
        return dict(zip(counts["status"].to_list(), counts["len"].to_list(), strict=True))


def read_table(run_dir: Path, name: str) -> pl.DataFrame:
    """A table as it stands: the last final file plus every checkpoint part, deduplicated.

    Later parts win over earlier ones and over the final file, so a request re-run on resume
    replaces its earlier row.
    """
    schema = _TABLES[name]
    sources = [run_dir / f"{name}.parquet"]
    sources += sorted((run_dir / "parts").glob(f"{name}-*.parquet"), key=_part_seq)
    frames = [pl.scan_parquet(path) for path in sources if path.exists()]
    if not frames:
        return pl.DataFrame(schema=schema)
    combined = pl.concat(frames, how="vertical").collect()
    return combined.unique(subset=_KEYS[name], keep="last", maintain_order=True)


def done_keys(run_dir: Path) -> set[tuple[str, int]]:
    """The (id, sample) pairs that already have a result in this run folder."""
    frame = read_table(run_dir, "results")
    return set(zip(frame["id"].to_list(), frame["sample"].to_list(), strict=True))


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


def _write_parquet_atomic(frame: pl.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    frame.write_parquet(tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _part_seq(path: Path) -> int:
    return int(path.stem.rsplit("-", 1)[1])
