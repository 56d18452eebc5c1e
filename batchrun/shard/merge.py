"""``batchrun merge JOB.yaml``: the job's shard folders combined into ``<output.dir>``, as if one
process had run the whole job there.

Each table is streamed from the shards' final files into the folder's own, with the compaction's
writer (``record.parquet.write_final``: results in input order), so memory stays within the
compaction's bound. Shards own disjoint rows (``assign``), so nothing is deduplicated; but each
shard folder is first checked to be this job's shard, by the request hashes of its rows, as a
resume checks a folder (``load.resume.resume_plan``), and to hold only rows that shard owns.
The same shards merged twice give the same files. It sends nothing.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl

from batchrun.errors import EXIT_OK, EXIT_ROW_ERRORS, JobError
from batchrun.job.schema import Job
from batchrun.load.inputs import count_rows, iter_batches
from batchrun.load.resume import resume_plan
from batchrun.record.cost import cost_text, estimate_cost
from batchrun.record.folder import JUDGE_DIR, translated
from batchrun.record.lock import RunLock, check_free
from batchrun.record.manifest import read_manifest
from batchrun.record.parquet import scan_table, write_final, write_json_atomic
from batchrun.record.rundir import make_run_dir
from batchrun.schedule.spend import REPLACED, judges_spent
from batchrun.shard.assign import Shard
from batchrun.shard.folders import combined_manifest, shard_folders, unfinished

__all__ = ["EXTRA_TABLES", "Merged", "check_target", "merge_job"]

EXTRA_TABLES = ("scores", "judgements")  # written by `batchrun score` in a shard's folder
_DAY_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]"  # {date} in output.dir, as a glob


@dataclass(frozen=True, slots=True)
class Merged:
    """What a merge wrote: the folder, its counts and exit code, and the closing line."""

    out_dir: Path
    counts: dict[str, int]
    complete: bool
    exit_code: int
    line: str


def merge_job(
    job: Job, *, partial: bool = False, now: datetime | None = None, day: str | None = None
) -> Merged:
    """Merge ``job``'s shard folders into its run folder: ``output.dir`` with ``{date}`` the
    day of ``now`` (by default today), or ``day`` (``merge --date YYYY-MM-DD``, the day the
    shards started). Raises JobError (exit 2) when there are none, when they are of two
    different N, when one is another job's, or (unless ``partial``) when one is missing or
    unfinished; RunLockedError (75) when a shard still runs or another process holds the run
    folder."""
    job = job.with_shard(None)
    when = _day(day) if day is not None else now or datetime.now(UTC)
    out_dir = job.run_dir(when).resolve()
    found = shard_folders(out_dir)
    if not found:
        raise JobError(f"{out_dir}: no shard folders (shard-K-of-N) to merge; {_hint(job, when)}")
    sizes = sorted({shard.count for shard in found})
    if len(sizes) > 1:
        listed = ", ".join(path.name for path in found.values())
        raise JobError(
            f"{out_dir}: shard folders of {' and '.join(map(str, sizes))} shards side by side "
            f"({listed}); a job's rows are split one way: remove the folders of the other "
            "split, then merge again"
        )
    count = sizes[0]
    for path in found.values():
        check_free(path)  # a shard still running: exit 75
    manifests = {shard: read_manifest(path) for shard, path in found.items()}
    missing = [Shard(k, count) for k in range(count) if Shard(k, count) not in found]
    why = {
        shard: reason
        for shard, path in found.items()
        if (reason := unfinished(path, manifests[shard])) is not None
    }
    for shard, path in found.items():
        left = _check_owned(job.with_shard(shard), path, _limit(manifests[shard]))
        if left and shard not in why:
            why[shard] = (
                f"{left} request(s) of this job not run in it (a variant or rows added to the "
                "job since it ran)"
            )
    gaps = [f"{s.folder}: missing" for s in missing] + [f"{s.folder}: {r}" for s, r in why.items()]
    if gaps and not partial:
        raise JobError(
            f"{out_dir}: cannot merge yet, {len(gaps)} of {count} shards are not done: "
            f"{'; '.join(gaps)}. Run each again (batchrun {job.path.name} --shard K/{count}: it "
            "resumes), or merge what there is with --partial"
        )
    with RunLock(make_run_dir(out_dir)):
        check_target(out_dir)
        with translated(out_dir, "writing the merged tables"):
            for name in ("results", "attempts"):
                write_final(out_dir, name, pl.concat([scan_table(p, name) for p in found.values()]))
            _merge_judges(out_dir, list(found.values()))
            for name in EXTRA_TABLES:
                having = [p / f"{name}.parquet" for p in found.values()]
                having = [p for p in having if p.exists()]
                if having:
                    frames = [pl.scan_parquet(p) for p in having]
                    write_final(out_dir, name, pl.concat(frames, how="diagonal_relaxed"))
            record = _manifest(job, out_dir, manifests, gaps)
            write_json_atomic(out_dir / "run.json", record)
    counts = record["counts"]
    code = EXIT_ROW_ERRORS if counts["error"] else EXIT_OK
    state = "merged" if record["complete"] else f"merged {len(found)} of {count} shards, PARTIAL"
    cost = cost_text(record["cost"])
    judged = judges_spent(job, out_dir)
    if judged and cost:  # as a run's closing line: the judges' part beside the generation's
        cost += f"; judges ${judged:,.6f}"
    line = (
        f"batchrun: {state}: {counts['ok']} ok, {counts['error']} error"
        f"{f'; {cost}' if cost else ''}; results in {out_dir / 'results.parquet'}"
    )
    return Merged(out_dir, counts, bool(record["complete"]), code, line)


def _day(text: str) -> datetime:
    """``--date YYYY-MM-DD`` as the UTC day ``{date}`` in ``output.dir`` is filled with."""
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise JobError(
            f"--date {text!r}: give the UTC day the shards started, as YYYY-MM-DD"
        ) from None


def _hint(job: Job, when: datetime) -> str:
    """Where the shard folders may be instead. With ``{date}`` in ``output.dir``, the merge
    looked in the folder of ``when``'s day: the days whose folders hold shard folders (the
    shards started on another day), to give with ``--date``."""
    first = (
        f"run the shards first (batchrun {job.path.name} --shard K/N, or --shards N --local), "
        "with the same --set options as this merge"
    )
    if "{date}" not in job.output.dir:
        return first
    pattern = job.output.dir.format(name=glob.escape(job.name), date=_DAY_GLOB)
    path = Path(pattern).expanduser()
    if not path.is_absolute():
        path = Path(glob.escape(str(job.base_dir))) / path
    days: set[str] = set()
    for found in glob.glob(str(path)):
        for day in re.findall(r"\d{4}-\d{2}-\d{2}", found):
            with contextlib.suppress(JobError):  # digits that are no day
                if job.run_dir(_day(day)) == Path(found) and shard_folders(Path(found)):
                    days.add(day)
    looked = f"output.dir has {{date}} and this merge looked in {when:%Y-%m-%d}'s folder (UTC)"
    if not days:
        return f"{looked}; {first}, or give the day the shards started with --date YYYY-MM-DD"
    listed = ", ".join(sorted(days))
    return f"{looked}; shard folders are in the folder of {listed}: merge with --date {max(days)}"


def _merge_judges(out_dir: Path, shards: list[Path]) -> None:
    """Each judge's run folder (``judge/<scorer>/``: results and attempts) of the shards, as one
    in ``out_dir``: so that scoring the merged folder finds what was judged (a prompt judged in
    a shard is not sent again), rebuilds judgements.parquet with every scorer's rows, and counts
    the judges' spend under ``limits.max_cost_usd``."""
    judges: dict[str, list[Path]] = {}
    for shard in shards:
        root = shard / JUDGE_DIR
        for folder in sorted(root.iterdir()) if root.is_dir() else []:
            if (folder / "results.parquet").exists() or (folder / "parts").is_dir():
                judges.setdefault(folder.name, []).append(folder)
    for scorer, folders in judges.items():
        target = make_run_dir(make_run_dir(out_dir / JUDGE_DIR) / scorer)
        for name in ("results", "attempts"):
            write_final(target, name, pl.concat([scan_table(f, name) for f in folders]))


def _limit(manifest: dict[str, Any]) -> int | None:
    """The ``--limit`` a shard ran with (its run.json's options)."""
    options = manifest.get("options")
    limit = options.get("limit") if isinstance(options, dict) else None
    return limit if isinstance(limit, int) else None


def _check_owned(shard_job: Job, path: Path, limit: int | None) -> int:
    """Refuse a shard folder that is not this job's shard: a row whose request this job would
    send differently (``resume_plan`` says so, naming rows), or rows the shard does not own (its
    ids are not this input's, or another split's). Returns how many of the shard's requests
    (under ``limit``) it has no row for: requests the job asks now that the shard never ran."""
    done = resume_plan(shard_job, path, limit, False, quarantine=False)
    rows = scan_table(path, "results").select(pl.len()).collect().item()
    matched = len(done) + done.again
    if rows > matched:
        raise JobError(
            f"{shard_job.path}: the shard folder {path} holds {rows - matched} row(s) that shard "
            f"{shard_job.shard} of this job would not send (ids not in this job's input, or "
            "rows of another split): it is another job's shard. Move it away, or merge with the "
            "job file and --set options the shards ran with"
        )
    planned = done.filter(shard_job, iter_batches(shard_job, limit=limit))
    return sum(map(len, planned)) - done.again


def check_target(out_dir: Path) -> None:
    """Refuse to overwrite the results of a run of the whole job (not a merge) in the folder."""
    record = read_manifest(out_dir)
    own = any((out_dir / "parts").glob("results-*.parquet")) or (
        (out_dir / "results.parquet").exists()
        and "shards" not in record
        and ("merged_from" not in record or not _only_shards_rows(out_dir))
    )  # run on after a merge but sent nothing: no row the merge would lose
    if own:
        after = " (run after a merge: rows added since)" if "merged_from" in record else ""
        raise JobError(
            f"{out_dir}: holds the results of an unsharded run of the job{after}, which a merge "
            "would replace; move them away (or set output.dir elsewhere for the shards, or start "
            "over with --fresh), then merge"
        )


def _only_shards_rows(out_dir: Path) -> bool:
    """Whether every row of ``out_dir``'s results is a row of one of its shard folders (the
    same key and run id): a run on the merged folder that sent nothing added no row a merge
    would lose."""
    key = ["variant", "id", "sample", "run_id"]
    shards = [scan_table(p, "results").select(key) for p in shard_folders(out_dir).values()]
    if not shards:
        return False
    own = pl.scan_parquet(out_dir / "results.parquet").select(key)
    added = own.join(pl.concat(shards), on=key, how="anti", nulls_equal=True)
    return bool(added.select(pl.len()).collect().item() == 0)


def _manifest(
    job: Job, out_dir: Path, manifests: dict[Shard, dict[str, Any]], gaps: list[str]
) -> dict[str, Any]:
    """The merged run.json: the shards' combined, with the counts, rows and cost of the merged
    results, the job as resolved now, and what is missing."""
    record = combined_manifest(manifests)
    results = pl.scan_parquet(out_dir / "results.parquet")
    by_status = results.group_by("status").len().collect()
    counts = dict(zip(by_status["status"].to_list(), by_status["len"].to_list(), strict=True))
    rows = results.select(pl.col("input_row").n_unique()).collect().item()
    complete = record["complete"] and not gaps
    record.update(
        status=record["status"] if not gaps or record["status"] != "complete" else "partial",
        complete=complete,
        message=None if not gaps else "merged without: " + "; ".join(gaps),
        counts={"ok": counts.get("ok", 0), "error": counts.get("error", 0)},
        input_rows=rows,
        input_rows_total=count_rows(job),
        limited=isinstance(record["options"], dict) and record["options"].get("limit") is not None,
        job=job.resolved(),
        job_sha256=hashlib.sha256(job.path.read_bytes()).hexdigest(),
        cost=estimate_cost(results, job.prices, job.request.mode),
    )
    replaced = sum(float(m.get(REPLACED) or 0.0) for m in manifests.values())
    if replaced:  # the shards' rows replaced since they were paid for: the cap counts them
        record[REPLACED] = round(replaced, 6)
    if record["started_at"] and record["finished_at"]:
        span = datetime.fromisoformat(str(record["finished_at"])) - datetime.fromisoformat(
            str(record["started_at"])
        )
        record["duration_s"] = round(span.total_seconds(), 3)
    return record
