"""Scoring a run folder: its results (joined with the input) through the job's scorers into
``scores.parquet``.

:func:`score_run` is what ``batchrun score JOB.yaml`` runs, and what a run runs at its end when
the job has ``scorers:``. It scores only what has no score yet: a (variant, id, sample) row a
scorer has not scored, whose result was replaced since (a new ``run_id``), or that it could not
score last time (a judge that failed is asked again; a row that ended in error is not, until it
is sent again); ``rescore`` drops one
scorer's rows first. It sends no generation request, only judge requests
(:mod:`batchrun.score.model`). ``scores.parquet`` is rewritten whole after each scorer, through a
temporary file and a rename, so a reader or a kill never sees a torn file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import structlog

from batchrun.errors import JobError
from batchrun.job.schema import Job
from batchrun.job.scorers import ModelScorer, PythonScorer, SqlScorer
from batchrun.load.sources import sources
from batchrun.preflight import check_columns
from batchrun.record.files import commit, write_temp
from batchrun.record.parquet import read_table
from batchrun.score.kinds import OUTPUT, score_rows

if TYPE_CHECKING:
    import httpx

__all__ = [
    "ROW_ERROR",
    "SCORES_SCHEMA",
    "ScoreOutcome",
    "read_scores",
    "score_run",
]

log = structlog.get_logger()

SCORES_SCHEMA: dict[str, Any] = {
    "run_id": pl.String,
    "variant": pl.String,
    "id": pl.String,
    "sample": pl.Int64,
    "scorer": pl.String,
    **OUTPUT,
}
KEY = ["variant", "id", "sample"]
ROW_ERROR = "the row ended in error"  # how a row's error begins when its result failed
_FILE = "scores.parquet"


@dataclass
class ScoreOutcome:
    """What a scoring pass did: rows scored per scorer, and of them how many got no score."""

    run_dir: Path
    scored: dict[str, int] = field(default_factory=dict)
    unscored: dict[str, int] = field(default_factory=dict)


def read_scores(run_dir: Path) -> pl.DataFrame:
    """``scores.parquet`` of ``run_dir`` (an empty frame when there is none)."""
    path = run_dir / _FILE
    if not path.exists():
        return pl.DataFrame(schema=SCORES_SCHEMA)
    return pl.read_parquet(path).select(
        pl.col(c).cast(t) if c in pl.read_parquet_schema(path) else pl.lit(None, t).alias(c)
        for c, t in SCORES_SCHEMA.items()
    )


def _write_scores(run_dir: Path, scores: pl.DataFrame) -> None:
    scores = scores.sort(["scorer", "variant", "id", "sample"], maintain_order=True)
    commit(write_temp(run_dir, _FILE, scores.write_parquet), run_dir / _FILE)


def _results(run_dir: Path) -> pl.DataFrame:
    results = read_table(run_dir, "results")
    if results.is_empty():
        from batchrun.shard.folders import shard_folders  # a sharded run not merged yet

        if shard_folders(run_dir):
            raise JobError(
                f"{run_dir}: no results of its own to score, only shard folders not merged "
                "yet; merge them first (batchrun merge JOB.yaml), then score the merged folder"
            )
        raise JobError(f"{run_dir}: no results to score; run the job first")
    if "variant" not in results.columns:
        results = results.with_columns(pl.lit("default").alias("variant"))
    return results


def _inputs(job: Job, results: pl.DataFrame) -> pl.DataFrame:
    """The input's columns by the row's ``id`` (the id column, or the row number across the
    files), less the names results.parquet already has (the result's value wins): those the
    templates use, or all of them for a ``sql`` or ``python`` scorer, which may use any."""
    frames = []
    for src in sources(job):
        if src.path.suffix.lower() == ".csv":
            frames.append(pl.scan_csv(src.path, infer_schema=False, glob=False))
        else:
            frames.append(pl.scan_parquet(src.path, glob=False))
    inputs = pl.concat(frames, how="diagonal_relaxed").with_row_index("__row")
    column = job.input.id_column
    ident = pl.col(column) if column is not None else pl.col("__row")
    inputs = inputs.with_columns(ident.cast(pl.String).alias("__id")).drop("__row")
    wanted = {c for scorer in job.scorers for c in scorer.columns()}
    every = any(isinstance(s, SqlScorer | PythonScorer) for s in job.scorers)
    keep = [
        c
        for c in inputs.collect_schema().names()
        if c == "__id" or (c not in results.columns and (every or c in wanted))
    ]
    return inputs.select(keep).rename({"__id": "id"}).unique("id", keep="first").collect()


def _pending(results: pl.DataFrame, done: pl.DataFrame) -> pl.DataFrame:
    """Result rows with no usable score in ``done`` (one scorer's rows): a row that failed
    stays as it is until its result is replaced (a new run_id)."""
    kept = pl.col("error").is_null() | pl.col("error").str.starts_with(ROW_ERROR)
    usable = done.filter(kept).select(*KEY, "run_id")
    return results.join(usable, on=[*KEY, "run_id"], how="anti", nulls_equal=True)


async def score_run(
    job: Job,
    run_dir: Path | None = None,
    *,
    rescore: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ScoreOutcome:
    """Score ``run_dir`` (default: the job's run folder) with the job's scorers."""
    names = [s.name for s in job.scorers]
    if not names:
        raise JobError(f"{job.path}: the job has no scorers: nothing to score (add scorers:)")
    if rescore is not None and rescore not in names:
        raise JobError(
            f"--rescore {rescore}: the job has no scorer of that name (its scorers: "
            f"{', '.join(names)})"
        )
    run_dir = run_dir or job.run_dir(datetime.now(UTC))
    results = _results(run_dir)
    scores = read_scores(run_dir)
    if rescore is not None:
        scores = scores.filter(pl.col("scorer") != rescore)
    check_columns(job, results.columns)
    outcome = ScoreOutcome(run_dir)
    inputs: pl.DataFrame | None = None
    for scorer in job.scorers:
        pending = _pending(results, scores.filter(pl.col("scorer") == scorer.name))
        if pending.is_empty():
            continue
        if inputs is None:
            inputs = _inputs(job, results)
        rows = pending.join(inputs, on="id", how="left", maintain_order="left")
        ok = rows.filter(pl.col("status") == "ok")
        failed = rows.filter(pl.col("status") != "ok").select(
            "run_id",
            *KEY,
            pl.lit(None, pl.Float64).alias("score"),
            pl.lit(None, pl.String).alias("answer"),
            pl.lit(None, pl.String).alias("explanation"),
            pl.format(ROW_ERROR + " ({})", pl.col("error_type").fill_null("?")).alias("error"),
        )
        if isinstance(scorer, ModelScorer):
            from batchrun.score.model import judge_rows  # a judge is a run: not for the report

            values = await judge_rows(job, scorer, ok, run_dir, transport)
        else:
            values = score_rows(scorer, ok, job.base_dir)
        new = pl.concat([ok.select("run_id", *KEY).hstack(values), failed])
        new = new.with_columns(pl.lit(scorer.name).alias("scorer")).select(list(SCORES_SCHEMA))
        stale = scores.filter(pl.col("scorer") == scorer.name).join(new, on=KEY, how="semi")
        scores = pl.concat([scores.join(stale, on=[*KEY, "scorer"], how="anti"), new])
        _write_scores(run_dir, scores)
        unscored = new["score"].null_count()
        outcome.scored[scorer.name], outcome.unscored[scorer.name] = new.height, unscored
        if unscored:  # said on the terminal too: a judge that failed on every row is no success
            why = new.filter(pl.col("score").is_null())["error"].drop_nulls().mode().sort()
            log.warning(
                "batchrun.score.scored",
                scorer=scorer.name,
                rows=new.height,
                unscored=unscored,
                **({"error": why[0]} if len(why) else {}),
            )
        else:
            log.info("batchrun.score.scored", scorer=scorer.name, rows=new.height, unscored=0)
    return outcome
