"""``batchrun JOB.yaml --shards N --local``: the N shards of a job as N processes on this host,
supervised, not scheduled: each child is ``batchrun JOB.yaml --shard K/N`` with the same options,
in its own session (a Ctrl-C on the terminal reaches the supervisor only, which forwards it to
every child once, so a first signal stops them cleanly and a second stops them at once, as in
one process). The children's JSON log lines are read back and logged again with their shard;
their ``batchrun.progress`` lines give way to one combined progress line, counted from the
shard folders' rows on disk. When every child has ended, the exit code is the worst of theirs
(:data:`WORST_FIRST`) and, when every shard completed, the shard folders are merged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import polars as pl
import structlog

from batchrun.errors import (
    EXIT_CAPPED,
    EXIT_FATAL,
    EXIT_INVALID,
    EXIT_IOERR,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_ROW_ERRORS,
    EXIT_UNAVAILABLE,
    SIGNAL_EXIT,
    JobError,
)
from batchrun.job.schema import Job
from batchrun.record.folder import translated
from batchrun.shard.assign import Shard
from batchrun.telemetry.setup import VERBOSE, log_display

__all__ = ["WORST_FIRST", "default_shards", "run_local", "worst"]

log = structlog.get_logger()

# The exit code of N shards is the first of these any shard exited with: what lost or may lose
# work on disk (74), a stop asked for (143, 130), what blocks every run (75, 2, 3), what a
# later run resumes (69, 4), then the rows' own outcome (1, 0). A code not listed (a child
# killed by a signal, a crash: 128 + the signal) comes before all of them.
WORST_FIRST = (
    EXIT_IOERR,
    SIGNAL_EXIT[signal.SIGTERM],
    SIGNAL_EXIT[signal.SIGINT],
    EXIT_LOCKED,
    EXIT_INVALID,
    EXIT_FATAL,
    EXIT_UNAVAILABLE,
    EXIT_CAPPED,
    EXIT_ROW_ERRORS,
    EXIT_OK,
)
_DRAW_S = 0.5  # how often the combined progress is counted and drawn
_LOG_EVERY_S = 10.0  # off a terminal: a batchrun.progress line this often, as one process


def worst(codes: list[int]) -> int:
    """The exit code that stands for all of ``codes`` (see :data:`WORST_FIRST`)."""
    ranked = {code: rank for rank, code in enumerate(WORST_FIRST)}
    return min(codes, key=lambda code: ranked.get(code, -1), default=EXIT_OK)


def default_shards() -> int:
    """One shard per core this process may run on."""
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass
class _Child:
    """One shard's process, its unread stderr and what its lines said."""

    shard: Shard
    proc: subprocess.Popen[bytes]
    folder: Path
    held: bytes = b""
    total: int | None = None  # its requests (the batchrun.run.started line)
    rows: int = 0  # rows on disk, last counted
    code: int | None = None
    said: list[str] = field(default_factory=list)  # its plain (non-JSON) lines: the summary


def run_local(
    job: Job,
    job_file: str,
    args: list[str],
    *,
    shards: int | None,
    shard: str | None,
    limit: int | None = None,
) -> int:
    """Run every shard of ``job`` as a child process with ``args`` (the command line's options,
    ``limit`` among them); the worst exit code, after the merge when every shard completed."""
    if shard is not None:
        raise JobError("--local runs every shard of the job: give --shards N, not --shard K/N")
    count = shards or default_shards()
    from batchrun.preflight import check_job

    check_job(job, limit=limit)  # once here: a bad input is one error (exit 2), not N
    started = datetime.now(UTC)  # the merge's too: {date} in output.dir is the start's day
    out_dir = job.run_dir(started).resolve()
    _clear_or_check(out_dir, fresh="--fresh" in args)
    verbose = ["-v"] if log_display().verbosity >= VERBOSE else []
    children = [_start(Shard(k, count), job_file, [*args, *verbose], out_dir) for k in range(count)]
    with _forwarded(children):
        _supervise(children)
    codes = [child.code if child.code is not None else EXIT_IOERR for child in children]
    for child in children:
        for line in child.said:
            print(
                f"batchrun [shard {child.shard}]: {line.removeprefix('batchrun: ')}",
                file=sys.stderr,
            )
    code = worst(codes)
    if code not in (EXIT_OK, EXIT_ROW_ERRORS):
        print(
            f"batchrun: shards exited {', '.join(map(str, codes))}: not merged; run the job "
            "again with the same options to resume the shards, then they merge",
            file=sys.stderr,
        )
        return code
    from batchrun.shard.merge import merge_job

    merged = merge_job(job, now=started)  # its errors end the command as `merge` would end
    print(merged.line, file=sys.stderr)
    return worst([code, merged.exit_code])


def _clear_or_check(out_dir: Path, *, fresh: bool) -> None:
    """Before any shard sends: with --fresh, clear what an earlier run wrote in ``out_dir``
    (its own files and the shard folders, as an unsharded --fresh does); without, refuse a
    folder whose unsharded results the merge at the end would refuse to replace (exit 2 after
    every shard ran, otherwise)."""
    from batchrun.record.lock import RunLock
    from batchrun.record.rundir import clear
    from batchrun.shard.merge import check_target

    if fresh and out_dir.is_dir():
        with RunLock(out_dir), translated(out_dir, "clearing it for --fresh"):
            clear(out_dir)
    check_target(out_dir)


def _start(shard: Shard, job_file: str, args: list[str], out_dir: Path) -> _Child:
    command = [sys.executable, "-m", "batchrun.cli", job_file, "--shard", str(shard)]
    proc = subprocess.Popen(
        [*command, "--log-format", "json", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # the terminal's Ctrl-C reaches the supervisor alone
    )
    return _Child(shard, proc, out_dir / shard.folder)


@contextlib.contextmanager
def _forwarded(children: list[_Child]) -> Iterator[None]:
    """SIGINT and SIGTERM sent to the supervisor go to every child still running."""

    def forward(signum: int, frame: object) -> None:
        log.warning("batchrun.shards.forwarding", signal=signal.Signals(signum).name)
        for child in children:
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in SIGNAL_EXIT}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _supervise(children: list[_Child]) -> None:
    """Read the children's stderr until each has ended; draw the combined progress."""
    selector = selectors.DefaultSelector()
    for child in children:
        assert child.proc.stderr is not None
        os.set_blocking(child.proc.stderr.fileno(), False)
        selector.register(child.proc.stderr, selectors.EVENT_READ, child)
    progress = _Progress(children)
    try:
        while selector.get_map():
            for key, _ in selector.select(timeout=_DRAW_S):
                child = key.data
                pipe: IO[bytes] = key.fileobj  # type: ignore[assignment]
                chunk = os.read(pipe.fileno(), 65536)
                if not chunk:
                    selector.unregister(pipe)
                    _lines(child, child.held + b"\n")
                    child.held = b""
                    child.code = _exit_code(child.proc.wait())
                    continue
                *whole, child.held = (child.held + chunk).split(b"\n")
                for line in whole:
                    _lines(child, line)
            progress.draw()
    finally:
        progress.stop()
        selector.close()


def _exit_code(returncode: int) -> int:
    """A child's exit code; killed by a signal (negative), 128 + the signal, as a shell says."""
    return 128 - returncode if returncode < 0 else returncode


def _lines(child: _Child, raw: bytes) -> None:
    """One line of a child's stderr: a JSON log line is logged again with its shard (its
    progress lines give way to the combined one); any other line is kept for the end."""
    text = raw.decode("utf-8", "replace").strip()
    if not text:
        return
    try:
        event = json.loads(text)
    except ValueError:
        event = None
    if not isinstance(event, dict) or "event" not in event:
        child.said.append(text)
        return
    name = str(event.pop("event"))
    level = logging.getLevelNamesMapping().get(str(event.pop("level", "info")).upper(), 20)
    event.pop("timestamp", None)
    if name == "batchrun.run.started" and isinstance(event.get("requests"), int):
        child.total = event["requests"]
    if name == "batchrun.progress":
        return
    log.log(level, name, shard=str(child.shard), **event)


class _Progress:
    """The combined progress of the shards: rows on disk against their requests."""

    def __init__(self, children: list[_Child]) -> None:
        self.children = children
        self.started = time.monotonic()
        self.logged = self.started
        self.first: int | None = None
        self.live: Any = None
        if log_display().live_progress(sys.stderr):
            from rich.console import Console
            from rich.live import Live

            self.live = Live(self._text(), console=Console(file=sys.stderr), auto_refresh=False)
            self.live.start()

    def draw(self) -> None:
        for child in self.children:
            child.rows = _rows_on_disk(child.folder, child.rows)
        if self.live is not None:
            self.live.update(self._text(), refresh=True)
        elif time.monotonic() - self.logged >= _LOG_EVERY_S:
            self.logged = time.monotonic()
            log.info("batchrun.progress", **self.snapshot())

    def stop(self) -> None:
        if self.live is not None:
            self.draw()
            self.live.stop()

    def snapshot(self) -> dict[str, Any]:
        totals = [c.total for c in self.children]
        total = None if None in totals else sum(t or 0 for t in totals)
        done = sum(min(c.rows, c.total) if c.total is not None else c.rows for c in self.children)
        if self.first is None:
            self.first = done  # rows an earlier run left: not this run's rate
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = (done - self.first) / elapsed
        left = None if total is None else total - done
        return {
            "done": done,
            "total": total,
            "shards": len(self.children),
            "shards_running": sum(c.code is None for c in self.children),
            "requests_per_s": round(rate, 2),
            "eta_s": round(left / rate, 1) if left is not None and rate > 0 else None,
        }

    def _text(self) -> Any:
        from rich.text import Text

        s = self.snapshot()
        total = "?" if s["total"] is None else f"{s['total']:,}"
        pct = f" ({100 * s['done'] / s['total']:.0f}%)" if s["total"] else ""
        eta = "?" if s["eta_s"] is None else f"{s['eta_s']:.0f}s"
        return Text(
            f"{s['done']:,}/{total}{pct}  {s['requests_per_s']} req/s  ETA {eta}  "
            f"shards {s['shards_running']}/{s['shards']} running"
        )


def _rows_on_disk(folder: Path, last: int) -> int:
    """Result rows in a shard folder now: its results.parquet and checkpoint parts, from
    their metadata (a row resent on resume counts twice until compaction). A file renamed or
    merged away while it is counted leaves the last count."""
    files = [folder / "results.parquet", *(folder / "parts").glob("results-*.parquet")]
    try:
        return sum(
            pl.scan_parquet(path).select(pl.len()).collect().item()
            for path in files
            if path.exists()
        )
    except (OSError, pl.exceptions.PolarsError):
        return last
