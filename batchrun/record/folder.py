"""Stage 4: the run folder's I/O problems, at the run level: what :mod:`batchrun.run` checks
before it sends anything, and how an OS error from the writers (a full disk, an I/O or
permission error) becomes one paragraph and exit 74 instead of a traceback.

The writers beside it write the files; this module writes none of them. It translates, removes the
temporary files a failed write leaves behind, and decides whether the end of a run compacts.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Callable, Iterator
from pathlib import Path

import structlog

from batchrun.errors import JobError, RunFolderError, os_error
from batchrun.models import Stop
from batchrun.record.parquet import ResultsWriter, scan_table

__all__ = [
    "JUDGE_DIR",
    "Stateless",
    "check_entries",
    "compact",
    "open_run_dir",
    "remove_temporaries",
    "translated",
]

log = structlog.get_logger()


# The judges' folder (batchrun.score.judge): one run folder of its own per model-graded scorer.
JUDGE_DIR = "judge"

# What batchrun keeps in a run folder, and whether each is a folder.
_ENTRIES = {
    "parts": True,
    "results.parquet": False,
    "attempts.parquet": False,
    "run.json": False,
    ".batchrun.lock": False,
    JUDGE_DIR: True,
    "judgements.parquet": False,
}


def open_run_dir(make: Callable[[Path], Path], path: Path) -> Path:
    """``make(path)`` (``record.rundir.make_run_dir``), with the job's own path problems as
    :class:`JobError` (exit 2): ``output.dir`` a symlink loop, or under a file."""
    try:
        return make(path)
    except RuntimeError as exc:  # Path.resolve on a symlink loop (Python < 3.13)
        raise JobError(
            f"output.dir: {path} cannot be used as the run folder: {exc}; "
            "fix the link or choose another folder with --set output.dir=..."
        ) from exc
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        raise JobError(
            f"output.dir: {path} cannot be used as the run folder: {exc.strerror}"
            f"{f' ({exc.filename})' if exc.filename else ''}; fix the path or choose another "
            "folder with --set output.dir=..."
        ) from exc


class Stateless:
    """The folder side of a mode that keeps nothing of its own in the run folder (stream mode:
    a request in flight when a run ended was never recorded, so it is sent again): its
    ``check``, ``prepare`` and ``in_flight``, for the run and for ``validate``."""

    def check(self, run_dir: Path, fresh: bool) -> None:
        """Nothing of its own in the run folder to refuse."""

    def prepare(self, run_dir: Path, fresh: bool) -> None:
        """Nothing of its own in the run folder."""

    async def in_flight(self, run_dir: Path) -> set[tuple[str, str, int]]:
        return set()


def check_entries(run_dir: Path) -> None:
    """Refuse a run folder whose own entries are of the wrong kind (``parts`` a file,
    ``run.json`` a folder, ...), before anything is sent: the run could not record there."""
    for name, folder in _ENTRIES.items():
        path = run_dir / name
        if not path.exists() and not path.is_symlink():
            continue
        if path.is_dir() != folder or (path.is_symlink() and not path.exists()):
            want = "a folder" if folder else "a file"
            raise RunFolderError(
                f"the run folder {run_dir} cannot be used: {path} is not {want} (batchrun keeps "
                f"its {'checkpoints' if folder else name} there). Nothing was sent; move it "
                "away or choose another output.dir, then run the job again."
            )


@contextlib.contextmanager
def translated(run_dir: Path, what: str) -> Iterator[None]:
    """An OS error raised inside becomes a :class:`RunFolderError` about ``what`` in
    ``run_dir``, after its temporary files are removed; other errors pass."""
    try:
        yield
    except Exception as exc:
        error = os_error(exc)
        if error is None or isinstance(exc, RunFolderError):
            raise
        remove_temporaries(run_dir)
        raise RunFolderError.writing(run_dir, what, error) from exc


async def compact(writer: ResultsWriter, stop: Stop) -> dict[str, int]:
    """Compact the checkpoints into the final files; counts by status. When the folder could
    not be written (during the run or now), the parts stay as they are for the next run, and
    the counts are those on disk, when they can be read."""
    if stop.write_failed is None:
        try:
            with translated(writer.run_dir, "compacting the checkpoints into results.parquet"):
                return await asyncio.to_thread(writer.finalize)
        except RunFolderError as exc:
            stop.write_failed = exc
            log.error("batchrun.run.write_failed", error=str(exc))
    try:
        return await asyncio.to_thread(_counts_on_disk, writer.run_dir)
    except Exception:  # the summary goes without counts; the paragraph says what failed
        return {}


def _counts_on_disk(run_dir: Path) -> dict[str, int]:
    counts = scan_table(run_dir, "results").group_by("status").len().collect()
    return dict(zip(counts["status"].to_list(), counts["len"].to_list(), strict=True))


def remove_temporaries(run_dir: Path) -> None:
    """Remove what a write cut short leaves under its temporary name (``.NAME.tmp``)."""
    for folder in (run_dir, run_dir / "parts"):
        with contextlib.suppress(OSError):
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
