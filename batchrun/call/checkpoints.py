"""Stage 3 → 4 in stream mode: finished rows written as checkpoint parts while the run goes on,
and what a failed write does to the run.

Every :data:`FLUSH_EVERY_S` the rows the writer buffered are written as a part. When a write
fails (disk full, an I/O or permission error), :attr:`Checkpoints.writable` closes, so that no
request starts; the rows stay in memory and the write is tried again with backoff for up to
``retry_s`` (space may come back). If it succeeds, the run goes on; if not, ``on_failed`` is
told once (the run stops and exits 74) and the rows in memory are given up: they have no
result row, so the next run sends them again. The Parquet itself is ``record``'s; this module
only decides when to write and what a failure means.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import structlog

from batchrun.errors import RunFolderError, os_error
from batchrun.record.parquet import ResultsWriter

__all__ = ["FLUSH_EVERY_S", "WRITE_RETRY_S", "Checkpoints"]

log = structlog.get_logger()

FLUSH_EVERY_S = 0.2  # at most this much finished work is lost to a kill -9
WRITE_RETRY_S = 60.0  # how long a failing checkpoint write is tried again before the run stops
_RETRY_WAITS_S = (0.2, 0.5, 1.0, 2.0, 5.0)  # between tries of a failing write; then the last

Rows = dict[str, list[dict[str, Any]]]


class Checkpoints:
    """The run's flusher: :meth:`run` until :meth:`finish`, then one last write."""

    def __init__(
        self,
        writer: ResultsWriter,
        *,
        retry_s: float,
        clock: Callable[[], float],
        on_failed: Callable[[RunFolderError], None],
    ) -> None:
        self._writer = writer
        self._retry_s = retry_s
        self._clock = clock
        self._on_failed = on_failed
        self._finished = asyncio.Event()
        self._held: Rows | None = None  # rows a failed write could not save, tried again
        self._failed_since: float | None = None
        self._tries = 0
        self._first_error: OSError | None = None
        self._interrupted = False
        self.gave_up = False
        self.writable = asyncio.Event()  # closed while writes fail: no request may start
        self.writable.set()

    def finish(self, *, interrupted: bool = False) -> None:
        """No more rows will come: write what is left and return from :meth:`run`. After a
        signal a failing write is tried once more, not for the rest of ``retry_s``: the user
        asked the run to end."""
        self._interrupted = interrupted
        self._finished.set()

    async def run(self) -> None:
        """Write the buffered rows every :data:`FLUSH_EVERY_S`, and once after
        :meth:`finish`. Never cancel it mid-write: a part being written when the run ends
        must be on disk before the run compacts (and then removes) the parts."""
        while not self.gave_up:
            if self._failed_since is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._finished.wait(), FLUSH_EVERY_S)
            else:
                await asyncio.sleep(_RETRY_WAITS_S[min(self._tries, len(_RETRY_WAITS_S)) - 1])
            last = self._finished.is_set()
            await self._write()
            if last and self._failed_since is None:
                return

    async def _write(self) -> None:
        rows = self._held
        if self._writer.pending:
            taken = self._writer.take()
            rows = taken if rows is None else {k: rows[k] + taken[k] for k in taken}
        if rows is None:
            return
        try:
            await asyncio.to_thread(self._writer.write_part, rows)
        except Exception as exc:
            error = os_error(exc)
            if error is None:
                raise
            self._failed(rows, error)
            return
        if self._failed_since is not None:
            log.warning("batchrun.checkpoint.recovered", tries=self._tries)
        self._held, self._failed_since, self._tries = None, None, 0
        self.writable.set()

    def _failed(self, rows: Rows, error: OSError) -> None:
        self._held = rows
        # A part cut short by the failure stays under its temporary name: remove it, for the
        # space it holds and so that nothing half-written is left behind.
        for tmp in self._writer.parts_dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        now = self._clock()
        self._tries += 1
        if self._failed_since is None:
            self._failed_since, self._first_error = now, error
            self.writable.clear()
            log.error(
                "batchrun.checkpoint.write_failed",
                error=str(error),
                rows=len(rows["results"]),
                note=f"no new requests; trying again for up to {self._retry_s:g} s",
            )
        else:
            log.warning("batchrun.checkpoint.still_failing", error=str(error), tries=self._tries)
        if now - self._failed_since >= self._retry_s or (
            self._finished.is_set() and self._interrupted
        ):
            self.gave_up = True
            self._on_failed(
                # The first error is the cause; later ones can be its consequences.
                RunFolderError.writing(
                    self._writer.run_dir, "writing a checkpoint", self._first_error or error
                )
            )
            self.writable.set()  # requests waiting to start see the run stopped, and leave
