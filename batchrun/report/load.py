"""Reading a run folder for the report: results, attempts and the manifest, as they stand; the
judges' own run folders (``judge/<scorer>/``) when asked.

A run may be finished, aborted, or still going (or killed): ``scan_table`` gives the final files
plus every checkpoint part, so a partial run reads the same way. Only the narrow columns are held
in memory (ids, statuses, counts, timings: tens of bytes a row); the text columns (completions,
content blocks, chunk offsets) stay on disk and are scanned lazily, streaming, when a few rows or
one number per row are needed. This module only reads; it never writes into the run folder and
knows nothing of how the report looks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import polars as pl

from batchrun.errors import JobError
from batchrun.record.folder import JUDGE_DIR
from batchrun.record.manifest import read_manifest
from batchrun.record.parquet import scan_table

__all__ = [
    "DEFAULT_VARIANT",
    "KEYS",
    "SENT",
    "WIDE_COLUMNS",
    "NoResultsError",
    "RunData",
    "load_run",
    "with_variant",
]

# Columns that can hold kilobytes a row: never held in memory for every row.
WIDE_COLUMNS = ("completion", "content_json", "chunk_offsets_s", "usage_json")
_Frame = TypeVar("_Frame", pl.DataFrame, pl.LazyFrame)
DEFAULT_VARIANT = "default"  # the one variant of a job without ``variants``
KEYS = ["variant", "id", "sample"]  # a result row's key
# Rows that were sent: a response cache hit's timings are another run's, measured then, so
# every timing statistic of the report filters on this.
SENT = ~pl.col("cache_hit")


class NoResultsError(JobError):
    """The folder holds no results: neither ``results.parquet`` nor checkpoint parts (exit 2)."""


@dataclass(frozen=True)
class RunData:
    """One run folder as read from disk."""

    run_dir: Path
    results: pl.DataFrame
    attempts: pl.DataFrame
    manifest: dict[str, Any]
    state: str  # complete | aborted | interrupted (run.json) | partial (parts) | unmerged | unknown
    shards: tuple[Path, ...] = ()  # an unmerged sharded folder: its shard folders, read instead

    def __post_init__(self) -> None:
        # One reading of folders written before variants and the response cache, for every
        # module of the report: each row has a variant and a cache_hit (false) to key and filter on.
        results = with_variant(self.results)
        if "cache_hit" not in results.columns:
            results = results.with_columns(
                pl.repeat(False, results.height, eager=True).alias("cache_hit")
            )
        object.__setattr__(
            self, "results", results.with_columns(pl.col("cache_hit").fill_null(False))
        )
        object.__setattr__(self, "attempts", with_variant(self.attempts))

    def scan_results(self) -> pl.LazyFrame:
        """Every column of the results, lazily (scan with a filter, a head or a select)."""
        return with_variant(_scan(self.run_dir, self.shards, "results"))

    def scan_judges(self) -> dict[str, pl.LazyFrame]:
        """The results of each judge's own run folder (``judge/<scorer>/``: every request a
        ``kind: model`` scorer sent, the spend cap's count of them), lazily, by scorer name;
        of an unmerged sharded folder, every shard's. Empty without judges."""
        found: dict[str, list[pl.LazyFrame]] = {}
        for folder in self.shards or (self.run_dir,):
            root = folder / JUDGE_DIR
            for judge in sorted(root.iterdir()) if root.is_dir() else ():
                if (judge / "results.parquet").exists() or (judge / "parts").is_dir():
                    found.setdefault(judge.name, []).append(scan_table(judge, "results"))
        return {scorer: pl.concat(frames) for scorer, frames in sorted(found.items())}

    @property
    def variants(self) -> list[str]:
        """The variants of the rows: in the order the job lists them, then any other by name."""
        listed = self.job.get("variants")
        order = (
            [v.get("name") for v in listed if isinstance(v, dict)]
            if isinstance(listed, list)
            else []
        )
        seen = set(self.results["variant"].unique().to_list())
        return [name for name in order if name in seen] + sorted(seen.difference(order))

    @property
    def job(self) -> dict[str, Any]:
        """The job as run.json resolved it ({} without one)."""
        job = self.manifest.get("job")
        return job if isinstance(job, dict) else {}

    @property
    def api(self) -> str | None:
        """The run's API (``job.request.api`` in run.json, else the results' only one)."""
        request = self.job.get("request")
        api = request.get("api") if isinstance(request, dict) else None
        if isinstance(api, str):
            return api
        apis = self.results["api"].drop_nulls().unique().to_list()
        return str(apis[0]) if len(apis) == 1 else None

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
    shards = _unmerged(run_dir)
    scan = _scan(run_dir, shards, "results")
    narrow = [c for c in scan.collect_schema().names() if c not in WIDE_COLUMNS]
    results = scan.select(narrow).collect(engine="streaming")
    if results.is_empty():
        raise NoResultsError(
            f"{run_dir}: no results in this folder (no results.parquet and no checkpoint parts "
            "under parts/); is it a run folder, and has the run finished a request yet?"
        )
    manifest = read_manifest(run_dir) if not shards else _shards_manifest(run_dir)
    return RunData(
        run_dir=run_dir,
        results=results,
        attempts=_scan(run_dir, shards, "attempts").collect(engine="streaming"),
        manifest=manifest,
        state=_state(run_dir, manifest) if not shards else "unmerged",
        shards=shards,
    )


def _unmerged(run_dir: Path) -> tuple[Path, ...]:
    """The shard folders of a sharded run folder not merged yet (no results of its own)."""
    from batchrun.shard.folders import shard_folders

    own = (run_dir / "results.parquet").exists() or any((run_dir / "parts").glob("results-*"))
    return () if own else tuple(shard_folders(run_dir).values())


def _scan(run_dir: Path, shards: tuple[Path, ...], name: str) -> pl.LazyFrame:
    if not shards:
        return scan_table(run_dir, name)
    return pl.concat([scan_table(path, name) for path in shards])


def _shards_manifest(run_dir: Path) -> dict[str, Any]:
    """The shards' run.json combined, saying that the folder is not merged and what is in it."""
    from batchrun.shard.folders import combined_manifest, shard_folders

    found = shard_folders(run_dir)
    record = combined_manifest({shard: read_manifest(path) for shard, path in found.items()})
    sizes = sorted({shard.count for shard in found})
    record["message"] = (
        f"unmerged: read from {len(found)} shard folders ("
        + ", ".join(f"{item['folder']} {item['status'] or 'running'}" for item in record["shards"])
        + f") of {' and '.join(map(str, sizes))} shards; batchrun merge JOB.yaml combines them"
    )
    return record


def with_variant(frame: _Frame) -> _Frame:
    """``frame`` with a ``variant`` on every row: a folder written before variants existed has
    no such column, or nulls in it; either reads as :data:`DEFAULT_VARIANT`."""
    if "variant" in frame.collect_schema().names():
        return frame.with_columns(pl.col("variant").fill_null(DEFAULT_VARIANT))
    if isinstance(frame, pl.DataFrame):
        return frame.with_columns(
            pl.repeat(DEFAULT_VARIANT, frame.height, eager=True).alias("variant")
        )
    return frame.with_columns(pl.lit(DEFAULT_VARIANT, dtype=pl.String).alias("variant"))


def _state(run_dir: Path, manifest: dict[str, Any]) -> str:
    # Parts left on disk mean a run is going on or was killed before it compacted them; an
    # earlier session's run.json then describes that session, not what is on disk now.
    if any((run_dir / "parts").glob("results-*.parquet")):
        return "partial"
    return str(manifest.get("status") or "unknown")
