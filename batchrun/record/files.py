"""Stage 4, record: how files come to be in the run folder, so that none is written through a
link someone planted there.

Every file batchrun writes whole is first a new temporary file made by ``mkstemp`` in the same
folder (``O_CREAT | O_EXCL``: a name that exists, a symbolic link included, is never opened),
written, fsynced, then renamed over its real name, which replaces a link there rather than
writing to what it points at. The folder itself must be its user's own (:func:`check_private`),
or another user could swap names under us. This module writes no rows and chooses no names of
the run folder's files (``record.parquet`` and ``record.rundir`` do).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from batchrun.errors import JobError, os_error

__all__ = ["TEMP_SUFFIX", "check_private", "commit", "file_crc32", "remove_temps", "write_temp"]

TEMP_SUFFIX = ".batchrun-tmp"  # only files with this ending are ever removed as leftovers
_CHUNK = 1 << 20


def check_private(folder: Path, *, what: str = "run folder") -> None:
    """Refuse (a JobError: exit 2) a folder another user owns, or that others may write to
    without the sticky bit: either could plant links or swap files while a run writes."""
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise JobError(
            f"{folder}: the {what} is a symbolic link; batchrun writes only into a real folder "
            "that you own; remove the link"
        )
    if not stat.S_ISDIR(info.st_mode):
        return  # not a folder at all: creating or writing it reports that
    uid = os.geteuid()
    if info.st_uid != uid:
        raise JobError(
            f"{folder}: the {what} belongs to another user (uid {info.st_uid}, not {uid}); "
            "batchrun writes only into a folder you own; choose another output.dir"
        )
    if info.st_mode & stat.S_IWOTH and not info.st_mode & stat.S_ISVTX:
        raise JobError(
            f"{folder}: the {what} is writable by every user (mode "
            f"{stat.S_IMODE(info.st_mode):o}) and has no sticky bit, so anyone could replace "
            f"its files; run chmod o-w {folder}, or choose another output.dir"
        )


def write_temp(folder: Path, name: str, write: Callable[[BinaryIO], object]) -> Path:
    """A new temporary file in ``folder`` for ``name``, filled by ``write`` and fsynced; on any
    error it is removed and the error raised. A write that failed with its OS error lost (polars'
    Parquet writer reports a full disk part-way through a footer as ``Invalid thrift: transport
    error``) on a file system left with no free block is raised as the ``ENOSPC`` it was."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=TEMP_SUFFIX, dir=folder)
    path = Path(tmp)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException as exc:
        # Looked at before the file is removed: its blocks are what filled the disk.
        full = not isinstance(exc, OSError) and os_error(exc) is not None and no_space_left(folder)
        with contextlib.suppress(OSError):
            path.unlink()
        if full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from exc
        raise
    return path


def no_space_left(folder: Path) -> bool:
    """Whether the file system holding ``folder`` has no block left that this user may write
    (root may write the blocks reserved for it)."""
    try:
        info = os.statvfs(folder)
    except OSError:
        return False
    return (info.f_bfree if os.geteuid() == 0 else info.f_bavail) == 0


def commit(tmp: Path, path: Path) -> None:
    """Give a written temporary file its real name, durably (the folder fsynced too); if the
    rename fails, the temporary file is removed and the error raised."""
    try:
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def file_crc32(path: Path) -> int:
    """CRC-32 of a file's bytes, read without following a link."""
    crc = 0
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def remove_temps(folder: Path, names: tuple[str, ...]) -> None:
    """Remove temporary files a killed run left in ``folder`` for files named ``names...``
    (call it under the lock; a report writing its page meanwhile holds no lock)."""
    if folder.is_dir():
        for leftover in folder.glob(f".*{TEMP_SUFFIX}"):
            if leftover.name[1:].startswith(names):
                with contextlib.suppress(OSError):
                    leftover.unlink()


def open_sqlite(path: Path, busy_timeout_s: float, schema: str) -> sqlite3.Connection:
    """A connection to the SQLite file at ``path`` (its folder made private if new), shared
    safely by processes: WAL journal, ``busy_timeout_s`` of patience for locks, autocommit
    (transactions are the caller's, by explicit BEGIN), usable from any thread, and ``schema``
    run on it. Closed again if any of that fails."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    conn = sqlite3.connect(
        path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
    )
    try:
        _enable_wal(conn, busy_timeout_s)
        conn.executescript(schema)
    except BaseException:
        conn.close()
        raise
    return conn


def _enable_wal(conn: sqlite3.Connection, patience_s: float) -> None:
    """Switch the file to WAL. Changing the journal mode answers "database is locked" at once,
    without SQLite's busy handler, while another process opens the same file: retry a while."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)
