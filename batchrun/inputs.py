"""Stage 1: the input files (CSV or Parquet) become :class:`RequestItem` batches.

Polars reads lazily, only the columns the job uses, and renders the templates with vectorised
string expressions; rows stream through in batches, so memory does not grow with the input.
CSV cells are read as strings (an id ``007`` stays ``007``); Parquet ids are cast to strings.
Row numbers in messages are 1-based data rows of the file named (a CSV header is not counted).
This stage must not send anything, know about results, or hold the whole input in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import polars as pl

from batchrun.conversation import CellKind, parse_messages
from batchrun.errors import JobError
from batchrun.job import Job
from batchrun.records import RequestItem
from batchrun.sources import (
    FILE,
    ID,
    LOCAL,
    PROMPT,
    ROW,
    SYSTEM,
    Source,
    derive,
    frame,
    messages_kind,
    parse_all_fields,
    sources,
    unreadable,
)

__all__ = ["InputSummary", "check_input", "iter_batches"]

_SHOWN = 5  # problems of one kind listed before "... and N more"


@dataclass(frozen=True, slots=True)
class InputSummary:
    """What a valid input holds: rows (after ``limit``), requests (rows x samples), columns."""

    rows: int
    requests: int
    columns: list[str]


def _where(job: Job, shown: str, local: int, ident: str | None) -> str:
    named = f", id {ident!r}" if job.input.id_column is not None and ident is not None else ""
    return f"{shown}: data row {local + 1} (1-based){named}"


def _more(found: int) -> list[str]:
    return [f"... and {found - _SHOWN} more like this"] if found > _SHOWN else []


def _row_problems(job: Job, src: Source, lf: pl.LazyFrame) -> tuple[int, list[str]]:
    """Row count and problems in one file's rows: null ids, null template cells, empty prompts."""
    cfg = job.input
    uses = {c: "input.prompt" for c in cfg.prompt_columns}
    for c in cfg.system_columns:
        uses[c] = "input.system" if c not in uses else "input.prompt and input.system"
    has_prompt = cfg.prompt is not None
    blank = pl.col(PROMPT).str.strip_chars().str.len_chars() == 0 if has_prompt else pl.lit(False)
    bad = pl.any_horizontal(*(pl.col(c).is_null() for c in uses), blank, pl.lit(False))
    ident = pl.col(ID)
    null_id = ident.is_null() | (ident == "") if cfg.id_column is not None else pl.lit(False)
    counts, null_ids, bad_rows = pl.collect_all(
        [
            lf.select(pl.len().alias("rows"), null_id.sum().alias("ids"), bad.sum().alias("bad")),
            lf.filter(null_id).select(LOCAL).head(_SHOWN),
            lf.filter(bad).select(LOCAL, ID, *uses, *([PROMPT] if has_prompt else [])).head(_SHOWN),
        ],
        engine="streaming",
    )
    problems = [
        f"{_where(job, src.shown, local, None)}: input.id_column {cfg.id_column!r} is null or "
        "empty; every row needs an id"
        for local in null_ids[LOCAL]
    ]
    problems += _more(counts["ids"][0])
    for row in bad_rows.iter_rows(named=True):
        where = _where(job, src.shown, row[LOCAL], row[ID])
        nulls = [c for c in uses if row[c] is None]
        for c in nulls:
            problems.append(f"{where}: column {c!r} is null ({uses[c]} uses it)")
        if not nulls:
            problems.append(f"{where}: the rendered prompt is empty (input.prompt: {cfg.prompt!r})")
    problems += _more(counts["bad"][0])
    return int(counts["rows"][0]), problems


def _message_problems(job: Job, src: Source, lf: pl.LazyFrame) -> list[str]:
    column = job.input.messages_column
    if column is None:
        return []
    kind = messages_kind(src.schema[column])
    found, problems = 0, []
    for df in lf.select(LOCAL, ID, column).collect_batches(chunk_size=10_000, engine="streaming"):
        for local, ident, cell in df.iter_rows():
            try:
                parse_messages(cell, kind=kind, text_only=job.request.api == "complete")
            except ValueError as exc:
                found += 1
                if found <= _SHOWN:
                    where = _where(job, src.shown, local, ident)
                    problems.append(f"{where}: input.messages_column {column!r}: {exc}")
    return problems + _more(found)


def _duplicates(job: Job, lf: pl.LazyFrame) -> list[str]:
    if job.input.id_column is None:
        return []
    dups = (
        lf.group_by(ID).agg(pl.len().alias("n")).filter(pl.col("n") > 1, pl.col(ID).is_not_null())
    )
    top, total = pl.collect_all(
        [dups.sort(["n", ID], descending=[True, False]).head(_SHOWN), dups.select(pl.len())],
        engine="streaming",
    )
    if top.height == 0:
        return []
    listed = ", ".join(f"{ident!r} ({n} rows)" for ident, n in top.iter_rows())
    more = f", and {total.item() - _SHOWN} more" if total.item() > _SHOWN else ""
    key = f"input.id_column {job.input.id_column!r}"
    return [
        f"{job.input.path}: {key} has duplicate ids: {listed}{more}; ids must be unique: fix "
        "the data, or remove input.id_column to number the rows instead"
    ]


def check_input(job: Job, *, limit: int | None = None) -> InputSummary:
    """Validate the input the job names, reading it in streaming passes; raise one JobError.

    Checks that every file is readable and has the columns the job uses, that ids are present and
    unique, that no template cell is null and no rendered prompt is empty, and that every
    ``messages_column`` cell is a valid conversation. ``limit`` checks only the first N rows.
    """
    if limit is not None and limit < 1:
        raise JobError(f"--limit must be at least 1 (got {limit})")
    files = sources(job)
    rows, problems, frames = 0, list[str](), list[pl.LazyFrame]()
    broken = False
    for index, src in enumerate(files):
        if limit is not None and rows >= limit:
            break
        lf = frame(job, src, index).with_columns(pl.col(LOCAL).alias(ROW))
        lf = derive(job, lf if limit is None else lf.head(limit - rows))
        try:
            parse_all_fields(src, None if limit is None else limit - rows)
            count, found = _row_problems(job, src, lf)
            found += _message_problems(job, src, lf)
        except pl.exceptions.PolarsError as exc:
            problems.append(unreadable(job, src.path, exc))
            broken = True
            continue
        rows, problems, frames = rows + count, problems + found, [*frames, lf.select(ID)]
    if not broken and frames:
        problems += _duplicates(job, pl.concat(frames))
    if not problems and rows == 0:
        problems.append(
            f"input.path {job.input.path!r}: the input has a header but no data rows; "
            "add rows, or point input.path at the right file"
        )
    if problems:
        raise JobError("\n".join(problems))
    columns = list(dict.fromkeys(c for src in files for c in src.schema))
    return InputSummary(rows=rows, requests=rows * job.request.samples, columns=columns)


def iter_batches(
    job: Job, *, limit: int | None = None, batch_rows: int = 1000
) -> Iterator[list[RequestItem]]:
    """Stream the input as lists of RequestItems, each from at most ``batch_rows`` input rows.

    Rows come in file order (files sorted by name); each row yields ``samples`` items, sample
    0..n-1 in order. Without ``id_column`` an item's id is its 0-based row number across all files.
    Run :func:`check_input` first: a bad row met here raises JobError and stops the stream.
    """
    if limit is not None and limit < 1:
        raise JobError(f"--limit must be at least 1 (got {limit})")
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1 (got {batch_rows})")
    files = sources(job)
    lf = pl.concat([frame(job, src, i) for i, src in enumerate(files)]).with_row_index(ROW)
    lf = derive(job, lf if limit is None else lf.head(limit))
    cfg, column = job.input, job.input.messages_column
    kind = messages_kind(files[0].schema[column]) if column is not None else None
    content = column if column is not None else PROMPT
    wanted = [ROW, FILE, LOCAL, ID, content, *([SYSTEM] if cfg.system is not None else [])]
    try:
        for df in lf.select(wanted).collect_batches(chunk_size=batch_rows, engine="streaming"):
            for start in range(0, df.height, batch_rows):
                yield _items(job, files, df.slice(start, batch_rows), content, kind)
    except pl.exceptions.PolarsError as exc:
        # check_input read these files; one changed since. Name it when there is only one.
        if len(files) == 1:
            raise JobError(unreadable(job, files[0].path, exc)) from exc
        raise JobError(f"input.path {job.input.path!r}: cannot read: {exc}") from exc


def _items(
    job: Job,
    files: list[Source],
    df: pl.DataFrame,
    content: str,
    kind: CellKind | None,
) -> list[RequestItem]:
    samples, text_only = job.request.samples, job.request.api == "complete"
    systems = df[SYSTEM].to_list() if SYSTEM in df.columns else [None] * df.height
    items: list[RequestItem] = []
    for (row, file, local, ident, cell), system in zip(
        df.select(ROW, FILE, LOCAL, ID, content).iter_rows(), systems, strict=True
    ):
        try:
            if not ident:
                raise ValueError(f"input.id_column {job.input.id_column!r} is null or empty")
            if kind is None:
                if cell is None or not cell.strip():
                    raise ValueError("the rendered prompt is empty or null")
                messages: tuple[dict[str, Any], ...] = ({"role": "user", "content": cell},)
            else:
                try:
                    messages = parse_messages(cell, kind=kind, text_only=text_only)
                except ValueError as exc:
                    column = job.input.messages_column
                    raise ValueError(f"input.messages_column {column!r}: {exc}") from None
            if system is None and job.input.system is not None:
                raise ValueError("a column input.system uses is null")
        except ValueError as exc:
            raise JobError(f"{_where(job, files[file].shown, local, ident)}: {exc}") from None
        for sample in range(samples):
            items.append(
                RequestItem(
                    id=ident,
                    sample=sample,
                    messages=tuple(dict(m) for m in messages),
                    system=system or None,  # a system template that renders empty: no system
                    row=row,
                )
            )
    return items
