"""One run at a time per run folder: an advisory lock held for the life of the process.

The lock is ``flock`` on ``.batchrun.lock`` inside the run folder. The kernel releases it when
the holder exits in any way, ``kill -9`` included, so a lock left by a dead run is simply free:
there is nothing stale to detect or break. The file keeps the holder's pid and start time, for
the message the next run prints. The file is opened only when it is a plain file of this user's
with one name: a link planted under its name is refused (exit 2), never written through. This
module takes and releases the lock; nothing else.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from batchrun.errors import JobError, RunLockedError

__all__ = ["RunLock", "check_free"]


class RunLock:
    """``with RunLock(run_dir):`` holds the run folder, or raises :class:`RunLockedError`."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".batchrun.lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = _open_own(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _held(self.path, fd) from None
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


def check_free(run_dir: Path) -> None:
    """What ``RunLock(run_dir)`` would refuse, found without creating or writing anything
    (``batchrun validate``): a lock file that is not batchrun's (JobError), or a run holding
    the folder (RunLockedError). The check takes a shared lock for an instant; a run starting
    in that instant is refused as if another run held the folder."""
    path = run_dir / ".batchrun.lock"
    if not path.exists() and not path.is_symlink():
        return
    fd = _open_own(path, create=False)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _held(path, fd) from None
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _held(path: Path, fd: int) -> RunLockedError:
    """The error for a lock another process holds; closes ``fd``."""
    holder = _read_holder(fd)
    os.close(fd)
    return RunLockedError(
        f"{path.parent}: another batchrun run is using this run folder ({holder}); "
        "wait for it to finish, or give this run another output.dir"
    )


def _open_own(path: Path, *, create: bool = True) -> int:
    """The lock file, opened only if it is a plain file of this user's with no other name: a
    symbolic or hard link planted under its name would have the stamp written into, and
    truncate, another file. ``O_NONBLOCK``: a FIFO planted there must not hang the open.
    Without ``create``, opened read-only (it must exist)."""
    flags = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    flags |= os.O_RDWR | os.O_CREAT if create else os.O_RDONLY
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise _not_ours(path, "is a symbolic link") from None
    info = os.fstat(fd)
    problem = (
        "is not a regular file"
        if not stat.S_ISREG(info.st_mode)
        else "has other names (hard links)"
        if info.st_nlink != 1
        else f"belongs to another user (uid {info.st_uid})"
        if info.st_uid != os.geteuid()
        else None
    )
    if problem is not None:
        os.close(fd)
        raise _not_ours(path, problem)
    return fd


def _not_ours(path: Path, problem: str) -> JobError:
    return JobError(
        f"{path}: the run folder's lock file {problem}, so batchrun will not write to it "
        "(something other than batchrun put it there); remove it and run again"
    )


def _read_holder(fd: int) -> str:
    try:
        stamp = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {stamp['pid']}, started {stamp['started_at']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
