"""Stage 1: the input files (CSV or Parquet) become :class:`RequestItem` batches.

Polars reads lazily, only the columns the job uses, and renders the templates with vectorised
string expressions; rows are read :data:`CHUNK_ROWS` at a time, by the check and by the stream
of batches alike, so memory does not grow with the input (but for the duplicate-id check's
8 bytes a row, and a CSV file's bytes, which polars holds while it reads one).
CSV cells are read as strings (an id ``007`` stays ``007``); Parquet ids are cast to strings.
Row numbers in messages are 1-based data rows of the file named (a CSV header is not counted).
This stage must not send anything, know about results, or hold the whole input in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import polars as pl

from batchrun.errors import JobError
from batchrun.job.schema import Job
from batchrun.job.variants import Variant
from batchrun.load.conversation import CellKind, parse_messages
from batchrun.load.sources import (
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
    templates,
    unreadable,
)
from batchrun.models import InputSummary, RequestItem
from batchrun.record.keyhash import seen_twice
from batchrun.shard.assign import owned

__all__ = ["InputSummary", "check_input", "count_rows", "iter_batches"]

_SHOWN = 5  # problems of one kind listed before "... and N more"
CHUNK_ROWS = 10_000  # input rows read at once, by the check and by the stream of batches
_SEED = 0x6261746368  # of the id hashes the duplicate check compares


def _where(job: Job, shown: str, local: int, ident: str | None) -> str:
    named = f", id {ident!r}" if job.input.id_column is not None and ident is not None else ""
    return f"{shown}: data row {local + 1} (1-based){named}"


def _more(found: int) -> list[str]:
    return [f"... and {found - _SHOWN} more like this"] if found > _SHOWN else []


def _chunks(src: Source, lf: pl.LazyFrame, head: int | None, rows: int) -> Iterator[pl.DataFrame]:
    """The first ``head`` rows (all when None) of ``lf``, a frame over ``src``, about ``rows``
    (:data:`CHUNK_ROWS` unless a caller says otherwise) at a time, each read when asked for.

    A Parquet chunk is a slice of its own query, which reads only the pages it needs: polars'
    streaming batches read a file's row groups ahead of a slow reader, up to the whole file (a
    million short rows held ~85 MB before the first request went out). A CSV is streamed in
    batches instead: polars holds a CSV file's bytes in memory whichever way it is read, and a
    slice would parse the file again up to it, each time.
    """
    if src.path.suffix.lower() == ".csv":
        lf = lf if head is None else lf.head(head)
        yield from lf.collect_batches(chunk_size=rows, lazy=True, engine="streaming")
        return
    offset = 0
    while head is None or offset < head:
        want = rows if head is None else min(rows, head - offset)
        df = lf.slice(offset, want).collect()
        if df.height:
            yield df
        if df.height < want:
            return
        offset += want


def _file_problems(
    job: Job,
    src: Source,
    lf: pl.LazyFrame,
    head: int | None,
    hashes: list[pl.Series],
    chunk_rows: int,
    id_hash: pl.Expr,
) -> tuple[int, list[str]]:
    """One file's row count and the problems in its rows, in one pass of chunks of
    ``chunk_rows``: null ids, null template cells, empty prompts, bad ``messages_column``
    cells (of every variant's templates). Appends the hashes of its ids (``id_hash``) to
    ``hashes`` for the duplicate check."""
    uses: dict[str, list[str]] = {}  # column -> the keys that use it
    prompts: dict[str, str] = {}  # rendered prompt column -> its key and template, for messages
    columns: dict[str, str] = {}  # messages column -> its key
    for variant in job.effective_variants:
        t, cfg = templates(job).index(variant.input), variant.input
        for key, cols in (("prompt", cfg.prompt_columns), ("system", cfg.system_columns)):
            for c in cols:
                keys = uses.setdefault(c, [])  # variants sharing the job's template: named once
                if variant.input_key(key) not in keys:
                    keys.append(variant.input_key(key))
        if cfg.prompt is not None:
            prompts.setdefault(f"{PROMPT}{t}", f"{variant.input_key('prompt')}: {cfg.prompt!r}")
        if cfg.messages_column is not None:
            columns.setdefault(cfg.messages_column, variant.input_key("messages_column"))
    blank = [pl.col(p).str.strip_chars().str.len_chars() == 0 for p in prompts]
    bad = pl.any_horizontal(*(pl.col(c).is_null() for c in uses), *blank, pl.lit(False))
    ident = pl.col(ID)
    null_id = ident.is_null() | (ident == "") if job.input.id_column is not None else pl.lit(False)
    shown = [LOCAL, ID, *uses, *prompts]
    wanted = list(dict.fromkeys([*shown, *columns]))
    rows = found_ids = found_bad = found_messages = 0
    null_ids: list[int] = []
    bad_rows: list[dict[str, Any]] = []
    message_problems: list[str] = []
    kinds = {column: messages_kind(src.schema[column]) for column in columns}
    text_only = job.request.api_spec.text_only
    for df in _chunks(src, lf.select(wanted), head, chunk_rows):
        rows += df.height
        if job.input.id_column is not None:
            hashes.append(df.select(id_hash.drop_nulls()).to_series())
        flagged = df.filter(null_id)
        found_ids += flagged.height
        null_ids += flagged[LOCAL].head(_SHOWN - len(null_ids)).to_list()
        flagged = df.filter(bad)
        found_bad += flagged.height
        bad_rows += flagged.select(shown).head(_SHOWN - len(bad_rows)).to_dicts()
        for column, key in columns.items():
            for local, ident_, cell in df.select(LOCAL, ID, column).iter_rows():
                try:
                    parse_messages(cell, kind=kinds[column], text_only=text_only)
                except ValueError as exc:
                    found_messages += 1
                    if found_messages <= _SHOWN:
                        where = _where(job, src.shown, local, ident_)
                        message_problems.append(f"{where}: {key} {column!r}: {exc}")
    problems = [
        f"{_where(job, src.shown, local, None)}: input.id_column {job.input.id_column!r} is "
        "null or empty; every row needs an id"
        for local in null_ids
    ]
    problems += _more(found_ids)
    for row in bad_rows:
        where = _where(job, src.shown, row[LOCAL], row[ID])
        nulls = [c for c in uses if row[c] is None]
        for c in nulls:
            problems.append(f"{where}: column {c!r} is null ({' and '.join(uses[c])} uses it)")
        if not nulls:
            for p, key in prompts.items():
                if row[p] is not None and not row[p].strip():
                    problems.append(f"{where}: the rendered prompt is empty ({key})")
    problems += _more(found_bad)
    return rows, problems + message_problems + _more(found_messages)


def _repeated(hashes: list[pl.Series]) -> pl.Series:
    """The values seen more than once in ``hashes``, which it empties."""
    if not hashes:
        return pl.Series(dtype=pl.UInt64)
    every = pl.concat(hashes, rechunk=False).sort()
    hashes.clear()
    return seen_twice(every)


# A 64-bit hash of the id, null for a null id.
_ID_HASH = pl.when(pl.col(ID).is_not_null()).then(pl.col(ID).hash(_SEED))


def _duplicates(
    job: Job, hashes: list[pl.Series], ids: list[pl.LazyFrame], id_hash: pl.Expr
) -> list[str]:
    """The duplicate-ids problem, if any. ``hashes`` holds a 64-bit hash (``id_hash``) of every
    non-null id (8 bytes a row, where grouping the ids themselves took ~115 MB for a million);
    only when two hashes are equal are the ids of those hashes read again (``ids``) and
    compared."""
    if job.input.id_column is None:
        return []
    twice = _repeated(hashes)
    if twice.is_empty():
        return []
    dups = (
        pl.concat([lf.filter(id_hash.is_in(twice.implode())) for lf in ids])
        .group_by(ID)
        .agg(pl.len().alias("n"))
        .filter(pl.col("n") > 1)
    )
    top, total = pl.collect_all(
        [dups.sort(["n", ID], descending=[True, False]).head(_SHOWN), dups.select(pl.len())],
        engine="streaming",
    )
    if top.height == 0:
        return []  # two ids with one hash, each once
    listed = ", ".join(f"{ident!r} ({n} rows)" for ident, n in top.iter_rows())
    more = f", and {total.item() - _SHOWN} more" if total.item() > _SHOWN else ""
    key = f"input.id_column {job.input.id_column!r}"
    return [
        f"{job.input.path}: {key} has duplicate ids: {listed}{more}; ids must be unique: fix "
        "the data, or remove input.id_column to number the rows instead"
    ]


def check_input(
    job: Job,
    *,
    limit: int | None = None,
    chunk_rows: int = CHUNK_ROWS,
    id_hash: pl.Expr = _ID_HASH,
) -> InputSummary:
    """Validate the input the job names, reading it in chunks of bounded size; raise one JobError.

    Checks that every file is readable and has the columns the job uses, that ids are present and
    unique, that no template cell is null and no rendered prompt is empty, and that every
    ``messages_column`` cell is a valid conversation. ``limit`` checks only the first N rows.
    ``chunk_rows`` (rows read at once) and ``id_hash`` (how ids are compared before the ids
    themselves) are for tests: small chunks, or a hash under which ids collide.
    """
    if limit is not None and limit < 1:
        raise JobError(f"--limit must be at least 1 (got {limit})")
    files = sources(job)
    rows, problems, ids, hashes = 0, list[str](), list[pl.LazyFrame](), list[pl.Series]()
    broken = False
    for index, src in enumerate(files):
        if limit is not None and rows >= limit:
            break
        head = None if limit is None else limit - rows
        lf = derive(job, frame(job, src, index).with_columns(pl.col(LOCAL).alias(ROW)))
        try:
            parse_all_fields(src, head)
            count, found = _file_problems(job, src, lf, head, hashes, chunk_rows, id_hash)
        except pl.exceptions.PolarsError as exc:
            problems.append(unreadable(job, src.path, exc))
            broken = True
            continue
        rows, problems = rows + count, problems + found
        ids.append(lf.select(ID) if head is None else lf.head(head).select(ID))
    if not broken:
        problems += _duplicates(job, hashes, ids, id_hash)
    if not problems and rows == 0:
        problems.append(
            f"input.path {job.input.path!r}: the input has a header but no data rows; "
            "add rows, or point input.path at the right file"
        )
    if problems:
        raise JobError("\n".join(problems))
    columns = list(dict.fromkeys(c for src in files for c in src.schema))
    requests = rows * job.request.samples * len(job.effective_variants)
    return InputSummary(rows=rows, requests=requests, columns=columns)


def count_rows(job: Job) -> int | None:
    """The input's data rows across all its files, whatever ``--limit`` says (for run.json);
    ``None`` when a file cannot be counted (a broken row past the limit the check stopped at).
    Run :func:`check_input` first; this only counts (Parquet: from the metadata)."""
    try:
        return sum(
            int(frame(job, src, index).select(pl.len()).collect().item())
            for index, src in enumerate(sources(job))
        )
    except pl.exceptions.PolarsError:
        return None


def iter_batches(
    job: Job, *, limit: int | None = None, batch_rows: int = 1000, chunk_rows: int = CHUNK_ROWS
) -> Iterator[list[RequestItem]]:
    """Stream the input as lists of RequestItems, each from at most ``batch_rows`` input rows.

    Rows come in file order (files sorted by name); each row yields one item per variant (in
    the job's run order, by name) and sample (0..n-1), variant by variant: row-major, so that a
    run cut short holds every variant of the rows it finished. Without ``id_column`` an item's
    id is its 0-based row number across all files.
    The files are read a chunk at a time, when the batches before are taken: memory does not
    grow with the input (``chunk_rows`` rows are read at once, rounded to whole batches). Run
    :func:`check_input` first: a bad row met here raises JobError and stops the stream.
    """
    if job.shard is not None:  # --shard K/N: only the requests it owns (batchrun.shard)
        whole = iter_batches(
            job.with_shard(None), limit=limit, batch_rows=batch_rows, chunk_rows=chunk_rows
        )
        yield from owned(job.shard, whole)
        return
    if limit is not None and limit < 1:
        raise JobError(f"--limit must be at least 1 (got {limit})")
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1 (got {batch_rows})")
    files = sources(job)
    wanted = [ROW, FILE, LOCAL, ID]
    for t, cfg in enumerate(templates(job)):
        wanted += [cfg.messages_column or f"{PROMPT}{t}"]
        wanted += [f"{SYSTEM}{t}"] if cfg.system is not None else []
    wanted = list(dict.fromkeys(wanted))
    chunk = batch_rows * max(1, chunk_rows // batch_rows)
    rows = 0
    try:
        for index, src in enumerate(files):
            if limit is not None and rows >= limit:
                break
            before = rows  # rows of the files before this one: ROW counts across files
            lf = frame(job, src, index).with_columns(
                (pl.col(LOCAL).cast(pl.Int64) + before).alias(ROW)
            )
            head = None if limit is None else limit - before
            for df in _chunks(src, derive(job, lf).select(wanted), head, chunk):
                rows += df.height
                for start in range(0, df.height, batch_rows):
                    yield _items(job, files, df.slice(start, batch_rows))
    except pl.exceptions.PolarsError as exc:
        # check_input read these files; one changed since. Name it when there is only one.
        if len(files) == 1:
            raise JobError(unreadable(job, files[0].path, exc)) from exc
        raise JobError(f"input.path {job.input.path!r}: cannot read: {exc}") from exc


def _items(job: Job, files: list[Source], df: pl.DataFrame) -> list[RequestItem]:
    """The requests of ``df``'s rows: per row, each variant (in run order), each sample."""
    samples, text_only = job.request.samples, job.request.api_spec.text_only
    shapes = templates(job)
    kinds = {
        cfg.messages_column: messages_kind(files[0].schema[cfg.messages_column])
        for cfg in shapes
        if cfg.messages_column is not None
    }
    runs = [(v, shapes.index(v.input)) for v in job.effective_variants]
    items: list[RequestItem] = []
    for values in df.iter_rows(named=True):
        row, file, local, ident = values[ROW], values[FILE], values[LOCAL], values[ID]
        rendered: dict[int, tuple[tuple[dict[str, Any], ...], str | None]] = {}
        try:
            if not ident:
                raise ValueError(f"input.id_column {job.input.id_column!r} is null or empty")
            for variant, t in runs:
                if t not in rendered:
                    rendered[t] = _conversation(variant, t, values, kinds, text_only)
        except ValueError as exc:
            raise JobError(f"{_where(job, files[file].shown, local, ident)}: {exc}") from None
        for variant, t in runs:
            messages, system = rendered[t]
            for sample in range(samples):
                items.append(
                    RequestItem(
                        id=ident,
                        sample=sample,
                        messages=tuple(dict(m) for m in messages),
                        system=system or None,  # a system template that renders empty: none
                        row=row,
                        variant=variant.name,
                    )
                )
    return items


def _conversation(
    variant: Variant,
    t: int,
    values: dict[str, Any],
    kinds: dict[str, CellKind | None],
    text_only: bool,
) -> tuple[tuple[dict[str, Any], ...], str | None]:
    """One row's messages and system under ``variant`` (template ``t``); ValueError."""
    cfg = variant.input
    system = values.get(f"{SYSTEM}{t}")
    if system is None and cfg.system is not None:
        raise ValueError(f"a column {variant.input_key('system')} uses is null")
    if cfg.messages_column is None:
        cell = values[f"{PROMPT}{t}"]
        if cell is None or not cell.strip():
            raise ValueError("the rendered prompt is empty or null")
        return ({"role": "user", "content": cell},), system
    try:
        kind = kinds[cfg.messages_column]
        messages = parse_messages(values[cfg.messages_column], kind=kind, text_only=text_only)
    except ValueError as exc:
        key = variant.input_key("messages_column")
        raise ValueError(f"{key} {cfg.messages_column!r}: {exc}") from None
    return messages, system
