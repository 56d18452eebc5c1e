"""The input files: found, opened lazily, checked for the columns the job uses, or explained.

Part of stage 1 (load), under :mod:`batchrun.load.inputs`: which files ``input.path`` names, their
schemas, one lazy frame per file with only the columns the job uses (ids and template columns as
strings), and the rendered id, prompt and system. When a file cannot be read, :func:`unreadable`
says why in words a user can act on (the line of the first byte that is not UTF-8, the line with
too many fields, a Parquet file cut short). It must not send anything or hold a file in memory.
"""

from __future__ import annotations

import csv
import difflib
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from batchrun.errors import JobError
from batchrun.job.schema import Job
from batchrun.job.sections import InputConfig
from batchrun.job.templates import TemplatePart
from batchrun.load.conversation import CellKind

__all__ = [
    "FILE",
    "ID",
    "LOCAL",
    "PROMPT",
    "ROW",
    "SYSTEM",
    "Source",
    "derive",
    "frame",
    "messages_kind",
    "parse_all_fields",
    "scan_input",
    "sources",
    "templates",
    "unreadable",
]

ROW, FILE, LOCAL = "__batchrun_row", "__batchrun_file", "__batchrun_local"
ID, PROMPT, SYSTEM = "__batchrun_id", "__batchrun_prompt", "__batchrun_system"
_SNIFF = 64 * 1024
_TO_UTF8 = "save it as UTF-8 (Excel: Save As 'CSV UTF-8'; or iconv -f cp1252 -t utf-8)"


@dataclass(frozen=True, slots=True)
class Source:
    """One input file: where it is, how messages name it, and its columns."""

    path: Path
    shown: str  # as the user would write it: relative to the job file's folder when inside it
    schema: pl.Schema


def scan_input(path: Path) -> pl.LazyFrame:
    """One input file, lazily: a CSV with every column a string (as the run reads it), or a
    Parquet file; its name taken literally, never as a glob."""
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


def sources(job: Job) -> list[Source]:
    """The input files with their schemas; raises JobError if any lacks what the job uses."""
    paths = job.input_paths()
    for p in paths:
        if p.suffix.lower() not in (".csv", ".parquet"):
            raise JobError(
                f"{_shown(job, p)}: input.path names a {p.suffix or 'extensionless'} file; "
                "input files must be .csv or .parquet (convert it, or fix input.path)"
            )
    if len({p.suffix.lower() for p in paths}) > 1:
        raise JobError(
            f"input.path {job.input.path!r} matches both .csv and .parquet files; "
            "use a pattern that matches one kind, e.g. *.csv"
        )
    found: list[Source] = []
    problems: list[str] = []
    for p in paths:
        try:
            problem = _sniff(p)
            schema = scan_input(p).collect_schema() if problem is None else None
        except (pl.exceptions.PolarsError, OSError) as exc:
            problems.append(unreadable(job, p, exc))
            continue
        if schema is None:
            problems.append(f"{_shown(job, p)}: {problem}")
            continue
        source = Source(p, _shown(job, p), schema)
        problems += _schema_problems(job, source)
        found.append(source)
    for column in {t.messages_column for t in templates(job) if t.messages_column is not None}:
        if len({messages_kind(s.schema[column]) for s in found if column in s.schema}) > 1:
            problems.append(
                f"{job.input.path}: {column!r} is JSON text in some files, lists in others"
            )
    if problems:
        raise JobError("\n".join(problems))
    return found


def _sniff(path: Path) -> str | None:
    """What is wrong with a CSV's encoding, judged from its start (polars would read on)."""
    if path.suffix.lower() != ".csv":
        return None
    with path.open("rb") as f:
        head = f.read(_SNIFF)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return f"is UTF-16 text, not UTF-8: {_TO_UTF8}"
    if b"\0" in head:
        return f"holds NUL bytes, so it is not UTF-8 text (UTF-16? a binary file?): {_TO_UTF8}"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if not (len(head) == _SNIFF and exc.reason == "unexpected end of data"):
            return _not_utf8(head, exc.start)
    return None


def _not_utf8(data: bytes, start: int, line_base: int = 1, offset_base: int = 0) -> str:
    line = line_base + data.count(b"\n", 0, start)
    return (
        f"line {line}: not UTF-8 text (byte 0x{data[start]:02x} at offset "
        f"{offset_base + start}): {_TO_UTF8}"
    )


def _utf8_problem(path: Path) -> str | None:
    """Where the first byte that is not UTF-8 is, reading the file in 1 MiB pieces."""
    line, offset, carry = 1, 0, b""
    with path.open("rb") as f:
        while True:
            chunk = f.read(1 << 20)
            data = carry + chunk
            good = len(data)
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as exc:
                if not (chunk and exc.reason == "unexpected end of data"):
                    return _not_utf8(data, exc.start, line, offset)
                good = exc.start  # a character split between two reads
            carry = data[good:]
            line, offset = line + data.count(b"\n", 0, good), offset + good
            if not chunk:
                return None


def _ragged_line(path: Path) -> str | None:
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        for row in reader:
            if len(row) > len(header):
                return (
                    f"line {reader.line_num}: {len(row)} fields, but the header has "
                    f"{len(header)}; put cells that hold commas in double quotes"
                )
    return None


def unreadable(job: Job, path: Path, exc: Exception) -> str:
    """Why ``path`` could not be read, and what to do about it, in one line."""
    shown, detail = _shown(job, path), _first_line(exc)
    if isinstance(exc, OSError):
        return f"{shown}: cannot read: {exc.strerror or detail}"
    if path.suffix.lower() == ".parquet":
        return (
            f"{shown}: not a readable Parquet file ({detail}); it may be cut short or still "
            "being written: write it again, or point input.path at a complete file"
        )
    if isinstance(exc, pl.exceptions.NoDataError):
        return f"{shown}: the file is empty; a CSV needs a header row and at least one data row"
    try:
        found = _utf8_problem(path) or _ragged_line(path)
    except (OSError, csv.Error):
        found = None
    if found is not None:
        return f"{shown}: {found}"
    return (
        f"{shown}: cannot read as CSV ({detail}); check the quoting (a cell with a comma, quote "
        "or line break goes in double quotes) and that each line has the header's fields"
    )


def parse_all_fields(src: Source, head: int | None) -> None:
    """Parse every field of a CSV's first ``head`` rows (all when None); raise PolarsError.

    Reading only the job's columns, polars would silently drop the extra fields of a line
    that has more than the header, cutting a cell that holds an unquoted comma.
    """
    if src.path.suffix.lower() == ".csv":
        lf = scan_input(src.path)
        lf = lf if head is None else lf.head(head)
        lf.select(pl.all().null_count()).collect(engine="streaming")


def _schema_problems(job: Job, src: Source) -> list[str]:
    names = list(src.schema)
    wanted: dict[tuple[str, str], None] = {}  # (key, column), each once, in order
    if job.input.id_column is not None:
        wanted[("input.id_column", job.input.id_column)] = None
    for variant in job.effective_variants:
        cfg = variant.input
        wanted.update(dict.fromkeys((variant.input_key("prompt"), c) for c in cfg.prompt_columns))
        wanted.update(dict.fromkeys((variant.input_key("system"), c) for c in cfg.system_columns))
        if cfg.messages_column is not None:
            wanted[(variant.input_key("messages_column"), cfg.messages_column)] = None
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
        elif not key.endswith("messages_column") and src.schema[col].is_nested():
            problems.append(f"{src.shown}: {key} column {col!r} is {src.schema[col]}, not a scalar")
        elif key.endswith("messages_column") and messages_kind(src.schema[col]) is None:
            problems.append(
                f"{src.shown}: {key} column {col!r} is {src.schema[col]}; it must hold a list "
                "of {role, content} structs or JSON text"
            )
    return problems


def messages_kind(dtype: pl.DataType) -> CellKind | None:
    """How a ``messages_column`` of this type holds conversations, or None if it cannot."""
    if dtype == pl.String:
        return "json"
    if isinstance(dtype, pl.List) and isinstance(dtype.inner, pl.Struct):
        return "list"
    return None


def templates(job: Job) -> list[InputConfig]:
    """The distinct input templates of the job's variants, in run order: the columns
    :func:`derive` renders are ``PROMPT``/``SYSTEM`` followed by a template's place here."""
    return list(dict.fromkeys(v.input for v in job.effective_variants))


def frame(job: Job, src: Source, index: int) -> pl.LazyFrame:
    """One file's rows: only the columns the job uses (ids and template columns as strings)."""
    cols: dict[str, pl.Expr] = {}
    for cfg in templates(job):
        cols.update({c: pl.col(c).cast(pl.String) for c in cfg.template_columns})
        if cfg.messages_column is not None:
            cols[cfg.messages_column] = pl.col(cfg.messages_column)
    if job.input.id_column is not None:
        cols[job.input.id_column] = pl.col(job.input.id_column).cast(pl.String)
    return (
        scan_input(src.path)
        .with_row_index(LOCAL)
        .select(LOCAL, *cols.values())
        .with_columns(pl.lit(index, pl.UInt32).alias(FILE))
    )


def _render(parts: tuple[TemplatePart, ...]) -> pl.Expr:
    exprs: list[pl.Expr] = []
    for literal, column in parts:
        if literal:
            exprs.append(pl.lit(literal, pl.String))
        if column is not None:
            exprs.append(pl.col(column))
    return pl.concat_str(exprs) if exprs else pl.lit("", pl.String)


def derive(job: Job, lf: pl.LazyFrame) -> pl.LazyFrame:
    """Add the id and each template's rendered prompt and system (``PROMPT0``, ``SYSTEM0``,
    ... in the order of :func:`templates`); needs ``ROW``."""
    cfg = job.input
    ident = pl.col(cfg.id_column) if cfg.id_column is not None else pl.col(ROW).cast(pl.String)
    derived = [ident.alias(ID)]
    for t, template in enumerate(templates(job)):
        if template.prompt is not None:
            derived.append(_render(template.prompt_parts).alias(f"{PROMPT}{t}"))
        if (system := template.system_parts) is not None:
            derived.append(_render(system).alias(f"{SYSTEM}{t}"))
    return lf.with_columns(derived)
