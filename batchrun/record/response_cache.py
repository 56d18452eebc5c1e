"""Stage 4, record: the response cache shared across run folders (``cache:`` in the job).

One SQLite file, ``responses.sqlite3`` in the cache folder, in WAL mode: concurrent runs on a
host share it (readers never block; one writer at a time, waiting up to the busy timeout).
An entry is keyed by :func:`cache_key` (the request's hash, the sample index, the API version
and the base URL) and holds the measured part of an ``ok`` result row as JSON
(:data:`CACHED_COLUMNS`); :func:`hit_row` turns it back into a row of the current run.

A cache that cannot be opened, read or written is a warning (``batchrun.cache.unusable``) and
the run goes on without it: the cache never costs a finished row. This module sends nothing
and writes no run folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from batchrun.job.sections import CacheConfig
from batchrun.models import RequestItem
from batchrun.record.files import open_sqlite
from batchrun.record.schema import RESULT_SCHEMA, key_columns

__all__ = [
    "CACHED_COLUMNS",
    "CacheInfo",
    "ResponseCache",
    "cache_file",
    "cache_key",
    "default_cache_dir",
    "hit_row",
    "open_cache",
    "peek_cache",
]

log = structlog.get_logger()

FILE_NAME = "responses.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, created REAL NOT NULL,
                                      row TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS responses_created ON responses (created);
"""

# What a response measured, kept as it was: the answer, its usage and its timing.
CACHED_COLUMNS = (
    "completion",
    "content_json",
    "stop_reason",
    "stop_sequence",
    "input_tokens",
    "output_tokens",
    "http_status",
    "request_id",
    "ttft_s",
    "e2e_s",
    "tpot_s",
    "output_tokens_per_s",
    "chunk_offsets_s",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "cache_creation_5m_input_tokens",
    "cache_creation_1h_input_tokens",
    "service_tier",
    "usage_json",
    "ttft_text_s",
)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/batchrun``, or ``~/.cache/batchrun``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "batchrun"


def cache_file(cache_dir: str | Path | None) -> Path:
    """The cache's SQLite file in ``cache_dir`` (``None``: the default folder)."""
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return folder / FILE_NAME


def cache_key(request_hash: str, sample: int, anthropic_version: str, base_url: str) -> str:
    """One entry's key: the same request, sample, API version and endpoint."""
    text = json.dumps([request_hash, sample, anthropic_version, base_url])
    return hashlib.sha256(text.encode()).hexdigest()


def open_cache(config: CacheConfig, base_dir: Path) -> ResponseCache | None:
    """The job's cache (opened on first use), or ``None`` with ``mode: off``; a relative
    ``cache.dir`` is taken from ``base_dir`` (the job file's folder)."""
    if config.mode == "off":
        return None
    folder = base_dir / Path(config.dir).expanduser() if config.dir else None
    return ResponseCache(cache_file(folder), write=config.mode == "read_write")


def peek_cache(config: CacheConfig, base_dir: Path) -> sqlite3.Connection | None:
    """The job's cache file opened to read only, creating and changing nothing (``batchrun
    validate`` counts the hits a run would have): as it stands on disk (``immutable``: no WAL
    or lock files made; what a run still writing has not checkpointed yet is not seen).
    ``None`` with ``mode: off``, no file yet, or a file that cannot be read (no hit counted)."""
    if config.mode == "off":
        return None
    folder = base_dir / Path(config.dir).expanduser() if config.dir else None
    path = cache_file(folder)
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        conn.execute("SELECT 1 FROM responses LIMIT 1").fetchall()
    except sqlite3.Error:
        return None
    return conn


def hit_row(
    cached: Mapping[str, Any],
    *,
    run_id: str,
    item: RequestItem,
    model: str,
    api: str,
    request_hash: str,
    at: datetime,
    queue_s: float,
) -> dict[str, Any]:
    """The current run's row of a cached response: ok, no attempt made (``attempts`` 0), free
    (``cost_usd`` 0), ``cache_hit`` true, started and finished ``at``; the response's own
    columns (text, usage, timing as measured, ``request_id``) as they were stored."""
    row: dict[str, Any] = dict.fromkeys(RESULT_SCHEMA)
    row.update({column: cached.get(column) for column in CACHED_COLUMNS})
    row.update(key_columns(run_id, item))
    row.update(
        model=model,
        api=api,
        status="ok",
        attempts=0,
        started_at=at,
        finished_at=at,
        queue_s=max(0.0, queue_s),
        retry_wait_s=0.0,
        request_hash=request_hash,
        cost_usd=0.0,
        cache_hit=True,
    )
    return row


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """What ``batchrun cache info`` prints."""

    path: Path
    entries: int
    size_bytes: int
    oldest: float | None  # wall-clock seconds of the oldest entry

    def as_json(self) -> dict[str, Any]:
        oldest = None if self.oldest is None else datetime.fromtimestamp(self.oldest, UTC)
        return {
            "path": str(self.path),
            "entries": self.entries,
            "size_bytes": self.size_bytes,
            "oldest": None if oldest is None else oldest.isoformat(timespec="seconds"),
        }


class ResponseCache:
    """The cache file at ``path``; ``write=False`` reads only. Opens on first use; once it
    fails, it warns once and answers every lookup with a miss."""

    def __init__(self, path: Path, *, write: bool = True, busy_timeout_s: float = 10.0) -> None:
        self.path = path
        self.write = write
        self._busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None
        self._broken = False
        self.hits = 0  # lookups answered
        self._lock = threading.Lock()  # one connection, used from worker threads in turn

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached columns of ``key``, or ``None``."""
        with self._use() as conn:
            if conn is None:
                return None
            found = conn.execute("SELECT row FROM responses WHERE key = ?", (key,)).fetchone()
            value = json.loads(found[0]) if found is not None else None
            if not isinstance(value, dict):
                return None
            self.hits += 1
            return value
        return None  # the cache failed: a miss

    def put(self, key: str, row: Mapping[str, Any]) -> None:
        """Keep the measured columns of an ok ``row`` (a no-op when read-only); an entry
        already there stays."""
        if not self.write:
            return
        text = json.dumps({column: row.get(column) for column in CACHED_COLUMNS})
        with self._use() as conn:
            if conn is not None:
                conn.execute(
                    "INSERT INTO responses VALUES (?, ?, ?) ON CONFLICT(key) DO NOTHING",
                    (key, time.time(), text),
                )

    def info(self) -> CacheInfo:
        """Entries, bytes on disk (the WAL included) and the oldest entry's time."""
        size = sum(p.stat().st_size for p in _files(self.path) if p.exists())
        if not self.path.exists():
            return CacheInfo(self.path, 0, 0, None)
        conn = self._connect()
        try:
            count, oldest = conn.execute("SELECT count(*), min(created) FROM responses").fetchone()
        finally:
            conn.close()
        return CacheInfo(self.path, int(count), size, oldest)

    def clear(self, older_than_s: float | None = None) -> int:
        """Remove every entry (or those older than ``older_than_s``); how many went."""
        if not self.path.exists():
            return 0
        conn = self._connect()
        try:
            cutoff = time.time() - older_than_s if older_than_s is not None else float("inf")
            gone = conn.execute("DELETE FROM responses WHERE created < ?", (cutoff,)).rowcount
            # Give the space back; skipped (not an error) while another run has the file open.
            with contextlib.suppress(sqlite3.OperationalError):
                conn.execute("VACUUM")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        return int(gone)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None

    @contextmanager
    def _use(self) -> Iterator[sqlite3.Connection | None]:
        """The connection, or ``None`` once the cache has failed; a failure inside marks it so."""
        with self._lock:
            conn = None
            if not self._broken:
                try:
                    conn = self._conn = self._conn or self._connect()
                except (sqlite3.Error, OSError) as exc:
                    self._failed(exc)
            if conn is None:
                yield None
                return
            try:
                yield conn
            except (sqlite3.Error, OSError, ValueError) as exc:
                self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self._broken = True
        log.warning(
            "batchrun.cache.unusable",
            path=str(self.path),
            error=str(exc),
            note="the run goes on without the response cache",
        )

    def _connect(self) -> sqlite3.Connection:
        # autocommit: every statement is its own transaction
        return open_sqlite(self.path, self._busy_timeout_s, _SCHEMA)


def _files(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
