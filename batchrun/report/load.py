"""Reading a run folder for the report: results, attempts and the manifest, as they stand.

A run may be finished, aborted, or still going (or killed): ``read_table`` gives the final files
plus every checkpoint part, so a partial run reads the same way. This module only reads; it never
writes into the run folder and knows nothing of how the report looks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from batchrun.errors import JobError
from batchrun.record.parquet import read_table

__all__ = ["NoResultsError", "RunData", "load_run"]


class NoResultsError(JobError):
    """The folder holds no results: neither ``results.parquet`` nor checkpoint parts (exit 2)."""


@dataclass(frozen=True)
class RunData:
    """One run folder as read from disk."""

    run_dir: Path
    results: pl.DataFrame
    attempts: pl.DataFrame
    manifest: dict[str, Any]
    state: str  # complete | aborted | interrupted (run.json) | partial (parts) | unknown

    @property
    def name(self) -> str:
        """The job's name from run.json, else the folder's."""
        job = self.manifest.get("job")
        name = job.get("name") if isinstance(job, dict) else None
        return str(name) if name else self.run_dir.resolve().name


def load_run(run_dir: Path | str) -> RunData:
    """Read ``run_dir``; raises ``NoResultsError`` naming the folder when it has no results."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NoResultsError(f"{run_dir}: no such run folder")
    results = read_table(run_dir, "results")
    if results.is_empty():
        raise NoResultsError(
            f"{run_dir}: no results in this folder (no results.parquet and no checkpoint parts "
            "under parts/); is it a run folder, and has the run finished a request yet?"
        )
    manifest = _manifest(run_dir)
    return RunData(
        run_dir=run_dir,
        results=results,
        attempts=read_table(run_dir, "attempts"),
        manifest=manifest,
        state=_state(run_dir, manifest),
    )


def _manifest(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "run.json"
    if not path.exists():
        return {}
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # a torn or foreign run.json: report on the tables alone
    return loaded if isinstance(loaded, dict) else {}


def _state(run_dir: Path, manifest: dict[str, Any]) -> str:
    # Parts left on disk mean a run is going on or was killed before it compacted them; an
    # earlier session's run.json then describes that session, not what is on disk now.
    if any((run_dir / "parts").glob("results-*.parquet")):
        return "partial"
    return str(manifest.get("status") or "unknown")
