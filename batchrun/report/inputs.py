"""The run's input, read back for a breakdown by one of its columns (``--by COLUMN``).

Results do not copy input columns, so the summary's breakdown (``by.py``) and the scores'
(``scores.py``) both read the input files the job names (run.json's resolved job: ``input.path``
relative to ``job_file``'s folder) for two columns, the key and ``COLUMN``. This module finds
and scans them, lazily; a missing input or column is a ``JobError`` naming both. It reads
nothing of the run folder but run.json's job, and joins nothing.
"""

from __future__ import annotations

import glob
from pathlib import Path

import polars as pl

from batchrun.errors import JobError
from batchrun.load.sources import scan_input
from batchrun.report.load import RunData

__all__ = ["NOT_IN_INPUT", "NULL_VALUE", "input_column"]

NULL_VALUE = "(null)"  # the group of an input row whose value is null
NOT_IN_INPUT = "(not in input)"  # the group of a result whose id the input no longer has


def input_column(run: RunData, column: str) -> tuple[pl.LazyFrame, bool]:
    """``column`` of the run's input, one row per input row in order: ``input_row`` (its
    position across the files), ``id`` (the row's id as the results hold it: the
    ``input.id_column`` value, else the position, as text) and ``value`` (``column`` as text,
    :data:`NULL_VALUE` for a null); and whether the job names an id column."""
    files, shown, id_column = _inputs(run, column)
    frames = []
    for path in files:
        scan = scan_input(path)
        names = scan.collect_schema().names()
        if column not in names:
            raise JobError(
                f"report --by {column}: the input {_relative(path, shown)} has no column "
                f"{column!r} (its columns: {', '.join(names)}); the run is {run.run_dir}"
            )
        ident = [pl.col(id_column).cast(pl.String).alias("id")] if id_column is not None else []
        frames.append(scan.select(*ident, pl.col(column).cast(pl.String).alias("value")))
    inputs = pl.concat(frames, how="vertical").with_row_index("input_row")
    if id_column is None:  # the id is the row's position across the files
        inputs = inputs.with_columns(pl.col("input_row").cast(pl.String).alias("id"))
    return (
        inputs.select(
            pl.col("input_row").cast(pl.Int64), "id", pl.col("value").fill_null(NULL_VALUE)
        ),
        id_column is not None,
    )


def _inputs(run: RunData, column: str) -> tuple[list[Path], Path, str | None]:
    """The input files, the folder paths are shown relative to, and the id column."""
    job = run.job
    source = job.get("input")
    source = source if isinstance(source, dict) else {}
    pattern = source.get("path")
    if not isinstance(pattern, str):
        raise JobError(
            f"report --by {column}: {run.run_dir / 'run.json'} names no input files "
            "(no run.json, or one without the job's input.path), so there is nothing to join"
        )
    job_file = job.get("job_file")
    base = Path(job_file).parent if isinstance(job_file, str) else run.run_dir
    literal = base / Path(pattern).expanduser()
    if literal.is_file():
        files = [literal]
    else:
        found = glob.glob(str(Path(pattern).expanduser()), root_dir=base, recursive=True)
        files = sorted(p for p in (base / f for f in found) if p.is_file())
    if not files:
        raise JobError(
            f"report --by {column}: the run's input {pattern} is not there any more "
            f"(looked in {base}, the job file's folder); the run is {run.run_dir}"
        )
    id_column = source.get("id_column")
    return files, base, id_column if isinstance(id_column, str) else None


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)
