"""Stage 4, record: Parquet checkpoints while the run goes on, final files at the end, and
reading a run folder's tables back (for resume and reports).

Finished requests are buffered and written as numbered part files under ``parts/`` (each written
to a new temporary file, fsynced and renamed, so a crash never leaves a half-written part under
a real name, and a link planted under a name is replaced, never written through; each part's
name carries its checksum, which ``record.verify`` checks before its rows are read).
``finalize`` compacts the earlier final files and the parts into ``results.parquet`` (ordered
by ``input_row``, then ``sample``) and ``attempts.parquet``, one row per (id, sample),
atomically. This is the only module that writes
Parquet; it defines no column (``record.schema`` does) and knows nothing of HTTP or of the job
file's shape.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import polars as pl

from batchrun.record.files import commit, file_crc32, remove_temps, write_temp
from batchrun.record.keyhash import seen_twice
from batchrun.record.schema import ATTEMPT_SCHEMA, RESULT_SCHEMA
from batchrun.record.verify import QUARANTINE, check_final, part_name, part_seq, readable_part

__all__ = [
    "KeyHash",
    "ResultsWriter",
    "hash_keys",
    "read_table",
    "request_keys",
    "resume_index",
    "resume_keys",
    "scan_table",
    "write_json_atomic",
]

# Row groups small enough that reading a file back streams in bounded memory: polars' default
# (~260k rows) made compacting a million rows take ~900 MB, 10k rows takes ~200 MB.
ROW_GROUP_ROWS = 10_000
SORT_ROWS = 10_000  # result rows compaction sorts at once (see _write_in_input_order)
MERGE_AFTER_PARTS = 64  # small checkpoint parts per table before they are merged into one
_SEED = 0x6B657973  # of the key hashes that find a key written twice, or a request done
_REQUEST_SEED = 0x72657175  # of the request hashes a resume compares, 8 bytes a row

_TABLES = {"results": RESULT_SCHEMA, "attempts": ATTEMPT_SCHEMA}
_KEYS = {
    "results": ["variant", "id", "sample"],
    "attempts": ["run_id", "variant", "id", "sample", "attempt"],
}

KeyHash = Callable[[list[str]], pl.Expr]
"""Rows' key columns to a 64-bit ``_hash`` column; tests pass one under which keys collide."""


def hash_keys(keys: list[str]) -> pl.Expr:
    """The 64-bit hash of each row's ``keys`` columns, as ``_hash``: the default ``key_hash``."""
    return pl.struct(keys).hash(_SEED).alias("_hash")


class ResultsWriter:
    """Buffers rows and writes them as checkpoint parts; compacts everything at the end."""

    def __init__(self, run_dir: Path, *, key_hash: KeyHash = hash_keys) -> None:
        self.run_dir = run_dir
        self._key_hash = key_hash
        self.parts_dir = run_dir / "parts"
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        # What a killed run was writing (the writer holds the lock).
        remove_temps(run_dir, (*(f"{name}.parquet." for name in _TABLES), "run.json."))
        remove_temps(self.parts_dir, tuple(f"{name}-" for name in _TABLES))
        self._buffers: dict[str, list[dict[str, Any]]] = {name: [] for name in _TABLES}
        # Quarantined parts count too, so that no number is given twice.
        taken = [*self.parts_dir.glob("*.parquet"), *self.parts_dir.glob(f"{QUARANTINE}/*")]
        self._seq = 1 + max((part_seq(p) for p in taken), default=0)

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
                self._write_part(frame, name, seq)
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
            small.sort(key=part_seq)
            frame = pl.concat([pl.scan_parquet(p) for p in small], how="vertical")
            self._write_part(frame, name, self._next_seq(), merged=True)  # streamed
            for part in small:
                part.unlink()

    def _write_part(
        self, frame: pl.DataFrame | pl.LazyFrame, name: str, seq: int, *, merged: bool = False
    ) -> None:
        """A part under a name that carries its checksum, committed by the same rename."""
        tmp = _write_parquet_temp(frame, self.parts_dir, name)
        commit(tmp, self.parts_dir / part_name(name, seq, file_crc32(tmp), merged=merged))

    def flush(self) -> None:
        self.write_part(self.take())

    def finalize(self) -> dict[str, int]:
        """Compact earlier final files and all parts into the final files; counts by status.

        The compaction streams (scan, deduplicate, sink), so a run of a million rows is never
        held in memory whole.
        """
        self.flush()
        for name in _TABLES:
            table = scan_table(self.run_dir, name, key_hash=self._key_hash, quarantine=True)
            path = self.run_dir / f"{name}.parquet"
            if name == "results":
                commit(_write_in_input_order(table, self.run_dir, path.name), path)
            else:
                commit(_write_parquet_temp(table, self.run_dir, path.name), path)
        for part in self.parts_dir.glob("*.parquet"):
            part.unlink()
        counts = (
            pl.scan_parquet(self.run_dir / "results.parquet")
            .group_by("status")
            .len()
            .collect(engine="streaming")
        )
        return dict(zip(counts["status"].to_list(), counts["len"].to_list(), strict=True))


def read_table(run_dir: Path, name: str, *, key_hash: KeyHash = hash_keys) -> pl.DataFrame:
    """A table as it stands: the last final file plus every checkpoint part, deduplicated."""
    return scan_table(run_dir, name, key_hash=key_hash).collect()


def scan_table(
    run_dir: Path, name: str, *, key_hash: KeyHash = hash_keys, quarantine: bool = False
) -> pl.LazyFrame:
    """:func:`read_table`, lazily. Later parts win over earlier ones and over the final file,
    so a request re-run on resume replaces its earlier row; order is otherwise kept.

    A damaged final file is a JobError (``record.verify.check_final``, its footer only: the
    run's start decodes it whole). A part whose checksum fails is left out with a warning, and
    moved to ``parts/quarantine/`` when ``quarantine`` (under the run folder's lock).

    Finding the rows to drop holds 8 bytes a row (a hash of each row's key), not the keys: a
    million keys grouped took ~150 MB. Only rows whose key hash is seen twice are read again,
    with their keys, to pick the last of each key.
    """
    schema = _TABLES[name]
    final = run_dir / f"{name}.parquet"
    check_final(final, decode=False)
    sources = [final] if final.exists() else []
    parts = sorted((run_dir / "parts").glob(f"{name}-*.parquet"), key=part_seq)
    sources += [part for part in parts if readable_part(part, quarantine=quarantine)]
    frames = [_scan_part(path, schema) for path in sources]
    if not frames:
        return pl.LazyFrame(schema=schema)
    combined = pl.concat(frames, how="vertical")
    dropped = _superseded(frames, combined, _KEYS[name], key_hash)
    if dropped.is_empty():
        return combined  # no key twice: the common case, streamed as it is
    return (
        combined.with_row_index("_pos")
        .filter(~pl.col("_pos").is_in(dropped.implode()))
        .drop("_pos")
    )


def _superseded(
    frames: list[pl.LazyFrame], combined: pl.LazyFrame, keys: list[str], key_hash: KeyHash
) -> pl.Series:
    """Positions in ``combined`` (``frames`` one after another) of rows a later row replaces."""
    hashes = pl.concat([f.select(key_hash(keys)).collect() for f in frames])["_hash"].sort()
    twice = seen_twice(hashes)
    del hashes
    if twice.is_empty():
        return pl.Series("_pos", [], dtype=pl.get_index_type())
    suspects = (
        combined.with_row_index("_pos")
        .filter(key_hash(keys).is_in(twice.implode()))
        .select(*keys, "_pos")
        .collect(engine="streaming")
    )
    last = suspects.group_by(keys).agg(pl.col("_pos").max())["_pos"]
    return suspects["_pos"].filter(~suspects["_pos"].is_in(last.implode()))


def _scan_part(path: Path, schema: Mapping[str, Any]) -> pl.LazyFrame:
    """A part or final file, checked already, with every column of ``schema``."""
    columns = pl.read_parquet_schema(path)
    # Files written before a column was added lack it: add it as nulls.
    missing = [
        pl.lit(None, dtype=dtype).alias(col) for col, dtype in schema.items() if col not in columns
    ]
    return pl.scan_parquet(path).with_columns(missing).select(list(schema))


def resume_index(
    run_dir: Path, *, key_hash: KeyHash = hash_keys, quarantine: bool = True
) -> pl.DataFrame:
    """Every (id, sample) with a result in this run folder, keyed as :func:`resume_keys` keys
    it (``_hash``, ``id``, ``sample``), with ``ok`` (its status is ok) and ``request``, its
    ``request_hash`` as :func:`request_keys` hashes it (null where it has none). Parts that
    fail their checksum are quarantined (unless not ``quarantine``: then only left out): call
    it under the run folder's lock.

    About 40 bytes a row, where a dict of Python tuples took ~800: read streaming, only these
    columns.
    """
    stored = pl.col("request_hash")
    return (
        scan_table(run_dir, "results", key_hash=key_hash, quarantine=quarantine)
        .select(
            key_hash(_KEYS["results"]),
            "id",
            "sample",
            (pl.col("status") == "ok").fill_null(False).alias("ok"),
            pl.when(stored.is_not_null()).then(stored.hash(_REQUEST_SEED)).alias("request"),
        )
        .collect(engine="streaming")
    )


def resume_keys(
    ids: list[str], samples: list[int], *, key_hash: KeyHash = hash_keys
) -> pl.DataFrame:
    """(id, sample) pairs with the 64-bit hash of each (``_hash``) that :func:`resume_index`
    gives the same pair, for looking requests up in it."""
    keys = pl.DataFrame(
        {"variant": [None] * len(ids), "id": ids, "sample": samples},
        schema={"variant": pl.String, "id": pl.String, "sample": pl.Int64},
    )
    return keys.select(key_hash(_KEYS["results"]), "id", "sample")


def request_keys(digests: list[str]) -> pl.Series:
    """The 64-bit hashes of request hashes (hex sha256) that ``resume_index`` compares by."""
    return pl.Series("request", digests, dtype=pl.String).hash(_REQUEST_SEED)


def write_json_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    text = json.dumps(payload, indent=2, default=_json_default, ensure_ascii=False) + "\n"
    commit(write_temp(path.parent, path.name, lambda fh: fh.write(text.encode())), path)


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _write_in_input_order(table: pl.LazyFrame, folder: Path, name: str) -> Path:
    """``table`` (results) ordered by ``input_row``, then ``sample``, in a new temporary file;
    rows recorded before ``input_row`` existed (null) go last, in the order they were stored.

    Sorted :data:`SORT_ROWS` rows at a time: each range of input rows is filtered from the
    scan (row groups whose statistics lie outside it are skipped), sorted and written to a
    temporary file of its own, and the files are then streamed into one. Sorting a million
    rows of short answers at once took ~1 GB; by ranges of 10k ~150 MB, as compaction without
    a sort, in ~8 s instead of ~1 s. Rows finish in about input order, so a range reads few
    row groups; in random order every range reads them all (300k rows: 8 s).
    """
    order = ("input_row", "sample")
    stats = table.select(
        pl.col("input_row").max().alias("top"), pl.col("input_row").count().alias("n")
    ).collect(engine="streaming")
    top, rows = stats.row(0)
    if rows <= SORT_ROWS:
        return _write_parquet_temp(
            table.sort(*order, nulls_last=True, maintain_order=True), folder, name
        )
    span = max(1, SORT_ROWS * (top + 1) // rows)  # input rows a range holds, by their density
    pieces: list[Path] = []
    try:
        row = pl.col("input_row")
        for start in range(0, top + 1, span):
            part = table.filter(row.is_between(start, start + span, closed="left"))
            pieces.append(_write_parquet_temp(part.sort(*order), folder, name))
        pieces.append(_write_parquet_temp(table.filter(row.is_null()), folder, name))
        return _write_parquet_temp(pl.concat([pl.scan_parquet(p) for p in pieces]), folder, name)
    finally:
        for piece in pieces:
            piece.unlink(missing_ok=True)


def _write_parquet_temp(frame: pl.DataFrame | pl.LazyFrame, folder: Path, name: str) -> Path:
    """``frame`` (a LazyFrame streamed, never collected) in a new temporary file in ``folder``,
    to be committed under its real name."""

    def write(fh: BinaryIO) -> None:
        if isinstance(frame, pl.LazyFrame):
            frame.sink_parquet(fh, row_group_size=ROW_GROUP_ROWS)
        else:
            frame.write_parquet(fh, row_group_size=ROW_GROUP_ROWS)

    return write_temp(folder, name, write)
