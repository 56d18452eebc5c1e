"""Limits: buckets shared by every batchrun process on this host, in small SQLite files.

One file per API key, base URL and model (named by their
:func:`~batchrun.schedule.limits.store.shared_scope`, never the key), in WAL mode; every
operation is one ``BEGIN IMMEDIATE`` transaction, so concurrent processes take from the same
buckets atomically. Time is the host's monotonic clock, the same in every process; the file
remembers which boot its readings belong to (wall time minus monotonic time) and starts afresh
after a reboot, when old readings mean nothing. The connection opens on first use.

This module must not do bucket arithmetic (``bucket`` does) nor know about requests.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from batchrun.record.files import open_sqlite
from batchrun.schedule.limits.bucket import Adjust, Level, Want, adjust_level, take
from batchrun.schedule.limits.store import PAUSED, StoreUnavailable

__all__ = ["SqliteStore", "default_state_dir", "state_path"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS buckets (name TEXT PRIMARY KEY, level REAL NOT NULL,
                                    updated REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value REAL NOT NULL);
"""
_BOOT_SLACK_S = 120.0  # wall-minus-monotonic drifts with NTP; a reboot moves it by far more


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/batchrun``, or ``~/.local/state/batchrun``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "batchrun"


def state_path(state_dir: str | Path | None, scope: str) -> Path:
    """The budget file of one key, base URL and model (``scope``: their
    :func:`~batchrun.schedule.limits.store.shared_scope`). Files of earlier versions, named by
    key and base URL alone, are never opened."""
    folder = Path(state_dir).expanduser() if state_dir else default_state_dir()
    return folder / f"budget-{scope[:32]}.sqlite3"


class SqliteStore:
    """A :class:`~batchrun.schedule.limits.store.BudgetStore` in a SQLite file, safe across
    processes.

    ``clock`` must read the same in every process sharing the file (``time.monotonic`` does on
    Linux and macOS); ``boot`` identifies the clock's origin (default: wall minus monotonic).
    Calls are short but touch the disk: the budget runs them off the event loop.
    """

    blocking = True

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.monotonic,
        boot: float | None = None,
        busy_timeout_s: float = 10.0,
    ) -> None:
        self.path = path
        self._clock = clock
        self._boot = boot if boot is not None else time.time() - time.monotonic()
        self._busy_timeout_s = busy_timeout_s
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()  # one connection, used from worker threads in turn

    def take(self, wants: Sequence[Want]) -> tuple[float, str | None]:
        names = [w.spec.name for w in wants]
        with self._transaction() as conn:
            now = self._clock()
            paused_until = _paused_until(conn)
            if paused_until > now:
                return paused_until - now, PAUSED
            states, wait, reason = take(_levels(conn, names), wants, now)
            _store(conn, states)  # refilled even when short: a new bucket starts filling
            return wait, reason

    def adjust(self, changes: Sequence[Adjust], *, pause_s: float = 0.0) -> None:
        with self._transaction() as conn:
            now = self._clock()
            levels = _levels(conn, [c.spec.name for c in changes])
            for change in changes:
                name = change.spec.name
                levels[name] = adjust_level(levels.get(name), change, now)
            _store(conn, levels)
            if pause_s > 0:
                conn.execute(
                    "INSERT INTO meta VALUES ('paused_until', ?) ON CONFLICT(key) "
                    "DO UPDATE SET value = max(value, excluded.value)",
                    (now + pause_s,),
                )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                conn = self._conn or self._open()
                conn.execute("BEGIN IMMEDIATE")
            except (sqlite3.Error, OSError) as exc:
                raise StoreUnavailable(f"{self.path}: {exc}") from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StoreUnavailable(f"{self.path}: {exc}") from exc
                raise

    def _open(self) -> sqlite3.Connection:
        # transactions are explicit: BEGIN IMMEDIATE ... COMMIT
        conn = open_sqlite(self.path, self._busy_timeout_s, _SCHEMA)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")  # a lost budget update after a crash is fine
            os.chmod(self.path, 0o600)
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT value FROM meta WHERE key = 'boot'").fetchone()
            if row is None or abs(row[0] - self._boot) > _BOOT_SLACK_S:
                # Readings from another boot (or a new file): forget levels and pauses.
                conn.execute("DELETE FROM buckets")
                conn.execute("DELETE FROM meta")
                conn.execute("INSERT INTO meta VALUES ('boot', ?)", (self._boot,))
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn


def _paused_until(conn: sqlite3.Connection) -> float:
    row = conn.execute("SELECT value FROM meta WHERE key = 'paused_until'").fetchone()
    return float(row[0]) if row is not None else float("-inf")


def _levels(conn: sqlite3.Connection, names: Sequence[str]) -> dict[str, Level]:
    if not names:
        return {}
    marks = ",".join("?" * len(names))
    rows = conn.execute(
        f"SELECT name, level, updated FROM buckets WHERE name IN ({marks})",
        list(names),
    ).fetchall()
    return {name: Level(level, updated) for name, level, updated in rows}


def _store(conn: sqlite3.Connection, levels: dict[str, Level]) -> None:
    conn.executemany(
        "INSERT INTO buckets VALUES (?, ?, ?) ON CONFLICT(name) "
        "DO UPDATE SET level = excluded.level, updated = excluded.updated",
        [(name, s.level, s.updated) for name, s in levels.items()],
    )
