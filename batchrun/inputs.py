"""Stage 1: the input files (CSV or Parquet) become :class:`RequestItem` batches.

Polars reads lazily, only the columns the job uses, and renders the templates with vectorised
string expressions; rows stream through in batches, so memory does not grow with the input.
CSV cells are read as strings (an id ``007`` stays ``007``); Parquet ids are cast to strings.
Row numbers in messages are 1-based data rows of the file named (a CSV header is not counted).
This stage must not send anything, know about results, or hold the whole input in memory.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl

from batchrun.errors import JobError
from batchrun.job import Job, TemplatePart
from batchrun.records import RequestItem

__all__ = ["InputSummary", "check_input", "iter_batches"]

_ROW, _FILE, _LOCAL = "__batchrun_row", "__batchrun_file", "__batchrun_local"
_ID, _PROMPT, _SYSTEM = "__batchrun_id", "__batchrun_prompt", "__batchrun_system"
_SHOWN = 5  # problems of one kind listed before "... and N more"


@dataclass(frozen=True, slots=True)
class InputSummary:
    """What a valid input holds: rows (after ``limit``), requests (rows x samples), columns."""

    rows: int
    requests: int
    columns: list[str]


@dataclass(frozen=True, slots=True)
class _Source:
    path: Path
    shown: str  # as the user would write it: relative to the job file's folder when inside it
    schema: pl.Schema


def _scan(path: Path) -> pl.LazyFrame:
    if path.suffix.lower() == ".csv":
        return pl.scan_csv(path, infer_schema=False, glob=False)
    return pl.scan_parquet(path, glob=False)


def _shown(job: Job, path: Path) -> str:
    try:
        return str(path.relative_to(job.base_dir))
    except ValueError:
        return str(path)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _sources(job: Job) -> list[_Source]:
    """The input files with their schemas; raises JobError if any lacks what the job uses."""
    paths = job.input_paths()
    kinds = {p.suffix.lower() for p in paths}
    for p in paths:
        if p.suffix.lower() not in (".csv", ".parquet"):
            raise JobError(f"{_shown(job, p)}: input files must be .csv or .parquet")
    if len(kinds) > 1:
        raise JobError(f"input.path {job.input.path!r} matches both .csv and .parquet files")
    sources: list[_Source] = []
    problems: list[str] = []
    for p in paths:
        try:
            schema = _scan(p).collect_schema()
        except (pl.exceptions.PolarsError, OSError) as exc:
            problems.append(f"{_shown(job, p)}: cannot read: {_first_line(exc)}")
            continue
        source = _Source(p, _shown(job, p), schema)
        problems += _schema_problems(job, source)
        sources.append(source)
    column = job.input.messages_column
    if column is not None and len({_messages_kind(s.schema[column]) for s in sources}) > 1:
        problems.append(f"{job.input.path}: {column!r} is JSON text in some files, lists in others")
    if problems:
        raise JobError("\n".join(problems))
    return sources


def _schema_problems(job: Job, src: _Source) -> list[str]:
    cfg, names = job.input, list(src.schema)
    wanted: list[tuple[str, str]] = []  # (key, column)
    if cfg.id_column is not None:
        wanted.append(("input.id_column", cfg.id_column))
    wanted += [("input.prompt", c) for c in cfg.prompt_columns]
    wanted += [("input.system", c) for c in cfg.system_columns]
    if cfg.messages_column is not None:
        wanted.append(("input.messages_column", cfg.messages_column))
    listing = ", ".join(names[:20]) + (f", ... ({len(names) - 20} more)" if len(names) > 20 else "")
    problems = []
    for key, col in wanted:
        if col not in src.schema:
            close = [n for n in names if n.lower() == col.lower()]
            close = close or difflib.get_close_matches(col, names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(
                f"{src.shown}: {key} uses column {col!r}, which the file does not have{hint} "
                f"(columns: {listing})"
            )
        elif key != "input.messages_column" and src.schema[col].is_nested():
            problems.append(f"{src.shown}: {key} column {col!r} is {src.schema[col]}, not a scalar")
        elif key == "input.messages_column" and _messages_kind(src.schema[col]) is None:
            problems.append(
                f"{src.shown}: {key} column {col!r} is {src.schema[col]}; it must hold a list "
                "of {role, content} structs or JSON text"
            )
    return problems


def _messages_kind(dtype: pl.DataType) -> Literal["json", "list"] | None:
    if dtype == pl.String:
        return "json"
    if isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct):
        return "list"
    return None


def _frame(job: Job, src: _Source, index: int) -> pl.LazyFrame:
    """One file's rows: only the columns the job uses (ids and template columns as strings)."""
    cfg = job.input
    cols = {c: pl.col(c).cast(pl.String) for c in cfg.template_columns}
    if cfg.id_column is not None:
        cols[cfg.id_column] = pl.col(cfg.id_column).cast(pl.String)
    if cfg.messages_column is not None:
        cols[cfg.messages_column] = pl.col(cfg.messages_column)
    return (
        _scan(src.path)
        .with_row_index(_LOCAL)
        .select(_LOCAL, *cols.values())
        .with_columns(pl.lit(index, pl.UInt32).alias(_FILE))
    )


def _render(parts: tuple[TemplatePart, ...]) -> pl.Expr:
    exprs: list[pl.Expr] = []
    for literal, column in parts:
        if literal:
            exprs.append(pl.lit(literal, pl.String))
        if column is not None:
            exprs.append(pl.col(column))
    return pl.concat_str(exprs) if exprs else pl.lit("", pl.String)


def _derive(job: Job, lf: pl.LazyFrame) -> pl.LazyFrame:
    """Add the id and the rendered prompt and system; needs ``_ROW``."""
    cfg = job.input
    ident = pl.col(cfg.id_column) if cfg.id_column is not None else pl.col(_ROW).cast(pl.String)
    derived = [ident.alias(_ID)]
    if cfg.prompt is not None:
        derived.append(_render(cfg.prompt_parts).alias(_PROMPT))
    if (system := cfg.system_parts) is not None:
        derived.append(_render(system).alias(_SYSTEM))
    return lf.with_columns(derived)


def _where(job: Job, shown: str, local: int, ident: str | None) -> str:
    named = f", id {ident!r}" if job.input.id_column is not None and ident is not None else ""
    return f"{shown}: data row {local + 1} (1-based){named}"


def _more(found: int) -> list[str]:
    return [f"... and {found - _SHOWN} more like this"] if found > _SHOWN else []


def _row_problems(job: Job, src: _Source, lf: pl.LazyFrame) -> tuple[int, list[str]]:
    """Row count and problems in one file's rows: null ids, null template cells, empty prompts."""
    cfg = job.input
    uses = {c: "input.prompt" for c in cfg.prompt_columns}
    for c in cfg.system_columns:
        uses[c] = "input.system" if c not in uses else "input.prompt and input.system"
    has_prompt = cfg.prompt is not None
    blank = pl.col(_PROMPT).str.strip_chars().str.len_chars() == 0 if has_prompt else pl.lit(False)
    bad = pl.any_horizontal(*(pl.col(c).is_null() for c in uses), blank, pl.lit(False))
    ident = pl.col(_ID)
    null_id = ident.is_null() | (ident == "") if cfg.id_column is not None else pl.lit(False)
    counts, null_ids, bad_rows = pl.collect_all(
        [
            lf.select(pl.len().alias("rows"), null_id.sum().alias("ids"), bad.sum().alias("bad")),
            lf.filter(null_id).select(_LOCAL).head(_SHOWN),
            lf.filter(bad)
            .select(_LOCAL, _ID, *uses, *([_PROMPT] if has_prompt else []))
            .head(_SHOWN),
        ],
        engine="streaming",
    )
    problems = [
        f"{_where(job, src.shown, local, None)}: input.id_column {cfg.id_column!r} is null or empty"
        for local in null_ids[_LOCAL]
    ]
    problems += _more(counts["ids"][0])
    for row in bad_rows.iter_rows(named=True):
        where = _where(job, src.shown, row[_LOCAL], row[_ID])
        nulls = [c for c in uses if row[c] is None]
        for c in nulls:
            problems.append(f"{where}: column {c!r} is null ({uses[c]} uses it)")
        if not nulls:
            problems.append(f"{where}: the rendered prompt is empty (input.prompt: {cfg.prompt!r})")
    problems += _more(counts["bad"][0])
    return int(counts["rows"][0]), problems


def _message_problems(job: Job, src: _Source, lf: pl.LazyFrame) -> list[str]:
    column = job.input.messages_column
    if column is None:
        return []
    kind = _messages_kind(src.schema[column])
    found, problems = 0, []
    for df in lf.select(_LOCAL, _ID, column).collect_batches(chunk_size=10_000, engine="streaming"):
        for local, ident, cell in df.iter_rows():
            try:
                _messages(cell, kind=kind, text_only=job.request.api == "complete")
            except ValueError as exc:
                found += 1
                if found <= _SHOWN:
                    where = _where(job, src.shown, local, ident)
                    problems.append(f"{where}: input.messages_column {column!r} {exc}")
    return problems + _more(found)


def _duplicates(job: Job, lf: pl.LazyFrame) -> list[str]:
    if job.input.id_column is None:
        return []
    dups = (
        lf.group_by(_ID).agg(pl.len().alias("n")).filter(pl.col("n") > 1, pl.col(_ID).is_not_null())
    )
    top, total = pl.collect_all(
        [dups.sort(["n", _ID], descending=[True, False]).head(_SHOWN), dups.select(pl.len())],
        engine="streaming",
    )
    if top.height == 0:
        return []
    listed = ", ".join(f"{ident!r} ({n} rows)" for ident, n in top.iter_rows())
    more = f", and {total.item() - _SHOWN} more" if total.item() > _SHOWN else ""
    key = f"input.id_column {job.input.id_column!r}"
    return [f"{job.input.path}: {key} has duplicate ids: {listed}{more}"]


def check_input(job: Job, *, limit: int | None = None) -> InputSummary:
    """Validate the input the job names, reading it in streaming passes; raise one JobError.

    Checks that every file is readable and has the columns the job uses, that ids are present and
    unique, that no template cell is null and no rendered prompt is empty, and that every
    ``messages_column`` cell is a valid conversation. ``limit`` checks only the first N rows.
    """
    if limit is not None and limit < 1:
        raise JobError(f"--limit must be at least 1 (got {limit})")
    sources = _sources(job)
    rows, problems, frames = 0, list[str](), list[pl.LazyFrame]()
    unreadable = False
    for index, src in enumerate(sources):
        if limit is not None and rows >= limit:
            break
        lf = _frame(job, src, index).with_columns(pl.col(_LOCAL).alias(_ROW))
        lf = _derive(job, lf if limit is None else lf.head(limit - rows))
        try:
            count, found = _row_problems(job, src, lf)
            found += _message_problems(job, src, lf)
        except pl.exceptions.PolarsError as exc:
            problems.append(f"{src.shown}: cannot read: {_first_line(exc)}")
            unreadable = True
            continue
        rows, problems, frames = rows + count, problems + found, [*frames, lf.select(_ID)]
    if not unreadable and frames:
        problems += _duplicates(job, pl.concat(frames))
    if not problems and rows == 0:
        problems.append(f"{job.input.path}: the input has no data rows")
    if problems:
        raise JobError("\n".join(problems))
    columns = list(dict.fromkeys(c for src in sources for c in src.schema))
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
    sources = _sources(job)
    lf = pl.concat([_frame(job, src, i) for i, src in enumerate(sources)]).with_row_index(_ROW)
    lf = _derive(job, lf if limit is None else lf.head(limit))
    cfg, column = job.input, job.input.messages_column
    kind = _messages_kind(sources[0].schema[column]) if column is not None else None
    content = column if column is not None else _PROMPT
    wanted = [_ROW, _FILE, _LOCAL, _ID, content, *([_SYSTEM] if cfg.system is not None else [])]
    try:
        for df in lf.select(wanted).collect_batches(chunk_size=batch_rows, engine="streaming"):
            for start in range(0, df.height, batch_rows):
                yield _items(job, sources, df.slice(start, batch_rows), content, kind)
    except pl.exceptions.PolarsError as exc:
        raise JobError(f"{job.input.path}: cannot read: {_first_line(exc)}") from exc


def _items(
    job: Job,
    sources: list[_Source],
    df: pl.DataFrame,
    content: str,
    kind: Literal["json", "list"] | None,
) -> list[RequestItem]:
    samples, text_only = job.request.samples, job.request.api == "complete"
    systems = df[_SYSTEM].to_list() if _SYSTEM in df.columns else [None] * df.height
    items: list[RequestItem] = []
    for (row, file, local, ident, cell), system in zip(
        df.select(_ROW, _FILE, _LOCAL, _ID, content).iter_rows(), systems, strict=True
    ):
        try:
            if not ident:
                raise ValueError(f"input.id_column {job.input.id_column!r} is null or empty")
            if kind is None:
                if cell is None or not cell.strip():
                    raise ValueError("the rendered prompt is empty or null")
                messages: tuple[dict[str, Any], ...] = ({"role": "user", "content": cell},)
            else:
                messages = _messages(cell, kind=kind, text_only=text_only)
            if system is None and job.input.system is not None:
                raise ValueError("a column input.system uses is null")
        except ValueError as exc:
            raise JobError(f"{_where(job, sources[file].shown, local, ident)}: {exc}") from None
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


def _drop_nulls(value: Any) -> Any:
    """A Parquet struct has every field in every row; the API wants absent fields absent."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _messages(
    cell: Any, *, kind: Literal["json", "list"] | None, text_only: bool
) -> tuple[dict[str, Any], ...]:
    """One ``messages_column`` cell as Messages API turns; ValueError says what is wrong."""
    if cell is None:
        raise ValueError("is null")
    if kind == "json":
        try:
            cell = json.loads(cell)
        except json.JSONDecodeError as exc:
            raise ValueError(f"is not valid JSON: {exc.msg} at character {exc.pos}") from None
    else:
        cell = _drop_nulls(cell)
    if not isinstance(cell, list) or not cell:
        raise ValueError("must be a non-empty list of {role, content} messages")
    turns = []
    for n, msg in enumerate(cell, 1):
        if not isinstance(msg, dict) or set(msg) != {"role", "content"}:
            raise ValueError(f"message {n} must be an object with exactly role and content")
        role, body = msg["role"], msg["content"]
        if role not in ("user", "assistant"):
            raise ValueError(f"message {n} has role {role!r}; roles are user and assistant")
        if n == 1 and role != "user":
            raise ValueError("must start with a user message")
        if text_only and not isinstance(body, str):
            raise ValueError(f"message {n}: api complete takes text content only")
        if not (isinstance(body, str) and body.strip()) and not _blocks_ok(body):
            raise ValueError(f"message {n} has empty content (text or a list of blocks)")
        turns.append({"role": role, "content": body})
    return tuple(turns)


def _blocks_ok(body: Any) -> bool:
    if not isinstance(body, list) or not body:
        return False
    for block in body:
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            return False
        if block["type"] == "text" and not (
            isinstance(block.get("text"), str) and block["text"].strip()
        ):
            return False
    return True
