"""The run folder's life: create it, clear it for ``--fresh``, plan a resume, stream the input
rows still to do, and write the manifest. Shared by stream and batch mode; it sends nothing and
writes no Parquet (``results`` does).
"""

from __future__ import annotations

import asyncio
import hashlib
import platform
import secrets
import shutil
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import polars as pl

from batchrun import __version__
from batchrun.clock import Clock
from batchrun.cost import estimate_cost
from batchrun.errors import JobError
from batchrun.inputs import InputSummary, iter_batches
from batchrun.job import Job
from batchrun.records import RequestItem
from batchrun.results import resume_index
from batchrun.worker import build_request

__all__ = [
    "clear",
    "make_run_dir",
    "manifest",
    "new_run_id",
    "pending_items",
    "resume_plan",
]


def new_run_id(now: datetime) -> str:
    """A run's id: its UTC start, sortable, and a random suffix for runs in the same second."""
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def make_run_dir(run_dir: Path) -> Path:
    """The run folder, created private to its owner and checked to be writable."""
    run_dir = run_dir.resolve()
    try:
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        probe = run_dir / ".batchrun.write-test"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise JobError(
            f"output.dir: cannot write the run folder {run_dir}: {exc.strerror}; "
            "choose a folder you can write with --set output.dir=..."
        ) from exc
    return run_dir


def clear(run_dir: Path) -> None:
    """--fresh: remove what an earlier run wrote (only batchrun's own files)."""
    for name in ("results.parquet", "attempts.parquet", "run.json", "report.html"):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "parts", ignore_errors=True)


def resume_plan(
    job: Job, run_dir: Path, limit: int | None, retry_errors: bool
) -> set[tuple[str, int]]:
    """The (id, sample) pairs to skip; refuses to resume when the job now asks otherwise.

    A request is compared by the hash of what would be sent. Any difference (model, template,
    max_tokens, input text, ...) means the folder's rows answer another question.
    """
    index = resume_index(run_dir)
    if not index:
        return set()
    changed: list[str] = []
    count = 0
    for batch in iter_batches(job, limit=limit):
        for item in batch:
            seen = index.get((item.id, item.sample))
            if seen is not None and seen[1] is not None and seen[1] != build_request(job, item)[1]:
                count += 1
                if len(changed) < 3:
                    changed.append(f"{item.id!r} (sample {item.sample})")
    if count:
        raise JobError(
            f"{job.path}: the run folder {run_dir} holds results of a different job: "
            f"{count} request(s) would now be sent differently (model, prompt, max_tokens or "
            f"input changed), e.g. {', '.join(changed)}. Run with --fresh to start over, or "
            "set output.dir to a new folder."
        )
    return {key for key, (status, _) in index.items() if status == "ok" or not retry_errors}


async def pending_items(
    job: Job, limit: int | None, done: set[tuple[str, int]]
) -> AsyncIterator[RequestItem]:
    """Stream the input in batches, read off the event loop, skipping what is already done."""
    batches: Iterator[list[RequestItem]] = iter_batches(job, limit=limit)
    while (batch := await asyncio.to_thread(next, batches, None)) is not None:
        for item in batch:
            if (item.id, item.sample) not in done:
                yield item


def manifest(
    job: Job,
    run_dir: Path,
    run_id: str,
    clock: Clock,
    started: float,
    finished: float,
    status: str,
    counts: dict[str, int],
    summary: InputSummary,
    message: str | None,
) -> dict[str, Any]:
    """run.json: how the run went, the job as resolved (no secrets), versions, and the cost of
    the rows in the folder at the streaming and the batch rate. Called after compaction."""
    results = pl.scan_parquet(run_dir / "results.parquet").select(
        "model", "input_tokens", "output_tokens"
    )
    return {
        "run_id": run_id,
        "status": status,
        "complete": status == "complete",
        "message": message,
        "started_at": clock.wall(started),
        "finished_at": clock.wall(finished),
        "duration_s": round(finished - started, 3),
        "counts": {"ok": counts.get("ok", 0), "error": counts.get("error", 0)},
        "requests": summary.requests,
        "input_rows": summary.rows,
        "job": job.resolved(),
        "job_sha256": hashlib.sha256(job.path.read_bytes()).hexdigest(),
        "versions": {
            "batchrun": __version__,
            "python": platform.python_version(),
            **{name: version(name) for name in ("httpx", "polars", "tenacity")},
        },
        "cost": estimate_cost(results, job.prices, job.request.mode),
    }
