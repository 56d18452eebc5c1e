"""A job's shard folders (``<output.dir>/shard-K-of-N/``) as found on disk, and their run.json
files combined into one. Only reads; ``merge`` and ``batchrun report`` (an unmerged folder) use
it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from batchrun.record.manifest import read_manifest
from batchrun.shard.assign import Shard

__all__ = ["combined_manifest", "merged_from", "shard_folders", "unfinished"]

# Worst first: the status a combination of shards takes is the worst of theirs.
_STATUS_ORDER = (
    "write_failed",
    "interrupted",
    "unreachable",
    "aborted",
    "capped",
    "canceled",
    "cancel_requested",
    "partial",
    "complete",
)


def shard_folders(out_dir: Path) -> dict[Shard, Path]:
    """The ``shard-K-of-N`` folders in ``out_dir``, by shard, in (N, K) order."""
    if not out_dir.is_dir():
        return {}
    found = {
        shard: path
        for path in out_dir.iterdir()
        if path.is_dir() and (shard := Shard.from_folder(path.name)) is not None
    }
    return dict(sorted(found.items(), key=lambda kv: (kv[0].count, kv[0].index)))


def merged_from(run_dir: Path) -> dict[str, Any]:
    """What a run of the whole job keeps, in the run.json it writes over a merge's, of how the
    folder's rows were made: ``{"merged_from": ...}`` with the merge's run id, end and shards'
    lines (carried on by every later run, until ``--fresh`` clears it); {} for a folder no
    merge wrote. Not under ``shards``: that key says a merge wrote run.json, and a merge may
    replace its own results (``merge.check_target``), which would lose the rows added since."""
    record = read_manifest(run_dir)
    if isinstance(record.get("merged_from"), dict):
        return {"merged_from": record["merged_from"]}
    if not record.get("shards"):
        return {}
    kept = {key: record.get(key) for key in ("run_id", "finished_at", "shards")}
    return {"merged_from": kept}


def unfinished(run_dir: Path, manifest: Mapping[str, Any]) -> str | None:
    """Why a shard folder does not hold a finished shard (None when it does): never run to
    its end, checkpoints not compacted (killed), or stopped before its last row."""
    if not manifest:
        return "no run.json (still running, or killed before its end)"
    if any((run_dir / "parts").glob("results-*.parquet")):
        return "checkpoints not compacted (still running, or killed)"
    if manifest.get("status") != "complete":
        return f"{manifest.get('status')}: {manifest.get('message') or 'not complete'}"
    return None


def combined_manifest(manifests: Mapping[Shard, Mapping[str, Any]]) -> dict[str, Any]:
    """One run.json for several shards: counts and requests summed, the earliest start and the
    latest end, the worst status, and each shard's own line under ``shards``. The job, options
    and versions are the first shard's. Deterministic: combining the same files twice gives the
    same mapping (the run id is a hash of the shards')."""
    first = next(iter(manifests.values()), {})
    counts = {"ok": 0, "error": 0}
    requests = 0
    for manifest in manifests.values():
        for status in counts:
            counts[status] += int(manifest.get("counts", {}).get(status, 0))
        requests += int(manifest.get("requests") or 0)
    statuses = [str(m.get("status") or "partial") for m in manifests.values()]
    status = min(statuses, key=_rank, default="partial")
    starts = [str(m["started_at"]) for m in manifests.values() if m.get("started_at")]
    ends = [str(m["finished_at"]) for m in manifests.values() if m.get("finished_at")]
    run_ids = ",".join(str(m.get("run_id")) for m in manifests.values())
    return {
        "run_id": "merged-" + hashlib.sha256(run_ids.encode()).hexdigest()[:12],
        "status": status,
        "complete": status == "complete",
        "message": None,
        "started_at": min(starts, default=None),
        "finished_at": max(ends, default=None),
        "counts": counts,
        "requests": requests,
        "options": first.get("options", {}),
        "job": first.get("job", {}),
        "versions": first.get("versions", {}),
        "shards": [
            {
                "shard": str(shard),
                "folder": shard.folder,
                "run_id": m.get("run_id"),
                "status": m.get("status"),
                "counts": m.get("counts"),
                "requests": m.get("requests"),
                "started_at": m.get("started_at"),
                "finished_at": m.get("finished_at"),
            }
            for shard, m in manifests.items()
        ],
    }


def _rank(status: str) -> int:
    return _STATUS_ORDER.index(status) if status in _STATUS_ORDER else 0
