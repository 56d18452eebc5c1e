"""Stage 4, record: run.json, the manifest of a run: how it went, the job as resolved (no
secrets), versions and cost. It builds the mapping only: writing it is
``record.parquet.write_json_atomic``'s, and it never changes the rows it reads.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path
from typing import Any

import polars as pl

from batchrun import __version__
from batchrun.clock import Clock
from batchrun.job.schema import Job
from batchrun.models import InputSummary, RunStatus
from batchrun.record.cost import estimate_cost

__all__ = ["manifest", "read_manifest"]


def manifest(
    job: Job,
    run_dir: Path,
    run_id: str,
    clock: Clock,
    started: float,
    finished: float,
    status: RunStatus,
    counts: dict[str, int],
    summary: InputSummary,
    message: str | None,
    *,
    options: Mapping[str, Any],
    input_rows_total: int | None,
    limited: bool,
) -> dict[str, Any]:
    """run.json: how the run went, the job as resolved (no secrets), the command-line options
    that shaped it, versions, and the cost of the rows in the folder (the sum of their
    ``cost_usd``, at both rates, with the prompt cache's part: see
    :func:`~batchrun.record.cost.estimate_cost`). Called after compaction, before any scoring:
    the cost is the generation's; each judge's run folder (``judge/<scorer>/``) has its own
    run.json with its cost, and ``batchrun report`` shows both.

    ``options`` holds ``limit``, ``fresh`` and ``retry_errors`` as given. ``input_rows`` is
    what the run covered, ``input_rows_total`` the whole input (null if it could not be
    counted); ``limited``, that ``--limit`` left rows out."""
    # estimate_cost reads only its columns (nulls for any a folder's file predates).
    results = pl.scan_parquet(run_dir / "results.parquet")
    return {
        "run_id": run_id,
        "status": status,
        "complete": status == RunStatus.COMPLETE,
        "message": message,
        "started_at": clock.wall(started),
        "finished_at": clock.wall(finished),
        "duration_s": round(finished - started, 3),
        "counts": {"ok": counts.get("ok", 0), "error": counts.get("error", 0)},
        "requests": summary.requests,
        "input_rows": summary.rows,
        "input_rows_total": input_rows_total,
        "limited": limited,
        "options": dict(options),
        "job": job.resolved(),
        "job_sha256": hashlib.sha256(job.path.read_bytes()).hexdigest(),
        "versions": {
            "batchrun": __version__,
            "python": platform.python_version(),
            **{name: version(name) for name in ("httpx", "polars", "tenacity")},
        },
        "cost": estimate_cost(results, job.prices, job.request.mode),
    }


def read_manifest(run_dir: Path) -> dict[str, Any]:
    """``run_dir``'s run.json, or {} when there is none, or it cannot be read or is not a
    mapping (torn, or not batchrun's): the one reading of it."""
    try:
        loaded = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}
