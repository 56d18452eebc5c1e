"""One run at a time per run folder: an advisory lock held for the life of the process.

The lock is ``flock`` on ``.batchrun.lock`` inside the run folder. The kernel releases it when
the holder exits in any way, ``kill -9`` included, so a lock left by a dead run is simply free:
there is nothing stale to detect or break. The file keeps the holder's pid and start time, for
the message the next run prints. This module takes and releases the lock; nothing else.
"""

from __future__ import annotations

import fcntl
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from batchrun.errors import RunLockedError

__all__ = ["RunLock"]


class RunLock:
    """``with RunLock(run_dir):`` holds the run folder, or raises :class:`RunLockedError`."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".batchrun.lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLockedError(
                f"{self.path.parent}: another batchrun run is using this run folder ({holder}); "
                "wait for it to finish, or give this run another output.dir"
            ) from None
        os.ftruncate(fd, 0)
        stamp = {"pid": os.getpid(), "started_at": datetime.now(UTC).isoformat()}
        os.write(fd, json.dumps(stamp).encode())
        self._fd = fd
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> str:
    try:
        stamp = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {stamp['pid']}, started {stamp['started_at']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
