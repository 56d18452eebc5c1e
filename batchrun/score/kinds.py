"""The scorers that need no model: exact, includes, regex, json, choice, sql and python.

Each takes the rows to score (``ok`` rows, with the result's and the input's columns) and
returns, in the same order, ``score``, ``answer``, ``explanation`` and ``error`` (see
:data:`OUTPUT`). A completion that is wrong scores 0; only a row that could not be scored at
all (a null target, a user function's failure) gets a null score with ``error`` set. Regular
expressions are Python's (``re``), as the job file checked them; SQL is polars', evaluated
vectorised (never Python ``eval``); ``python`` runs the user's own code, as documented.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl

from batchrun.errors import JobError
from batchrun.job.scorers import (
    ChoiceScorer,
    ExactScorer,
    IncludesScorer,
    JsonScorer,
    Normalize,
    PythonScorer,
    RegexScorer,
    SqlScorer,
)
from batchrun.job.templates import parse_template

__all__ = ["OUTPUT", "render", "score_rows"]

OUTPUT = {"score": pl.Float64, "answer": pl.String, "explanation": pl.String, "error": pl.String}
_NO_TARGET = "no target: a column the template uses is null in this row"

Deterministic = (
    ExactScorer
    | IncludesScorer
    | RegexScorer
    | JsonScorer
    | ChoiceScorer
    | SqlScorer
    | PythonScorer
)


def render(template: str, escape: bool = False) -> pl.Expr:
    """``template`` over the row's columns, as a string expression (null when a column it
    uses is null); with ``escape``, column values are regex-escaped."""
    exprs: list[pl.Expr] = []
    for literal, column in parse_template(template):
        if literal:
            exprs.append(pl.lit(literal, pl.String))
        if column is not None:
            value = pl.col(column).cast(pl.String)
            exprs.append(value.map_elements(re.escape, pl.String) if escape else value)
    return pl.concat_str(exprs) if exprs else pl.lit("", pl.String)


def _normalized(expr: pl.Expr, steps: tuple[Normalize, ...]) -> pl.Expr:
    for step in steps:
        if step == "strip":
            expr = expr.str.strip_chars()
        elif step == "lower":
            expr = expr.str.to_lowercase()
        elif step == "collapse_whitespace":
            expr = expr.str.replace_all(r"\s+", " ")
        else:  # strip_punctuation
            expr = expr.str.replace_all(r"\p{P}", "")
    return expr


def _normalize_text(text: str, steps: tuple[Normalize, ...]) -> str:
    return pl.select(_normalized(pl.lit(text, pl.String), steps)).item()  # type: ignore[no-any-return]


def score_rows(scorer: Deterministic, rows: pl.DataFrame, base_dir: Path) -> pl.DataFrame:
    """The scores of ``rows`` by ``scorer`` (its columns are checked by the caller)."""
    if rows.is_empty():
        return pl.DataFrame(schema=OUTPUT)
    if isinstance(scorer, ExactScorer | IncludesScorer):
        return _compared(scorer, rows)
    if isinstance(scorer, SqlScorer):
        return _sql(scorer, rows)
    if isinstance(scorer, PythonScorer):
        return _python(scorer, rows, base_dir)
    scores: list[tuple[float | None, str | None, str | None, str | None]]
    if isinstance(scorer, RegexScorer):
        scores = list(_regex(scorer, rows))
    elif isinstance(scorer, ChoiceScorer):
        scores = list(_choice(scorer, rows))
    else:
        scores = list(_json(scorer, rows, base_dir))
    return pl.DataFrame(scores, schema=OUTPUT, orient="row")


def _compared(scorer: ExactScorer | IncludesScorer, rows: pl.DataFrame) -> pl.DataFrame:
    completion = _normalized(pl.col("completion").fill_null(""), scorer.normalize)
    target = _normalized(render(scorer.target), scorer.normalize)
    hit = (
        completion == target
        if isinstance(scorer, ExactScorer)
        else completion.str.contains(target, literal=True)
    )
    return rows.select(
        hit.cast(pl.Float64).alias("score"),
        target.alias("answer"),
        pl.lit(None, pl.String).alias("explanation"),
        pl.when(target.is_null()).then(pl.lit(_NO_TARGET)).alias("error"),
    )


def _texts(rows: pl.DataFrame, template: str | None, escape: bool = False) -> list[str | None]:
    if template is None:
        return [None] * rows.height
    return rows.with_columns(render(template, escape).alias("__text"))["__text"].to_list()


def _regex(
    scorer: RegexScorer, rows: pl.DataFrame
) -> Iterator[tuple[float | None, str | None, str | None, str | None]]:
    patterns = _texts(rows, scorer.pattern, escape=True)
    targets = _texts(rows, scorer.target)
    group = scorer.group if scorer.group is not None else 0
    for text, pattern, target in zip(rows["completion"], patterns, targets, strict=True):
        if pattern is None or (scorer.target is not None and target is None):
            yield None, None, None, _NO_TARGET
            continue
        found = re.search(pattern, text or "")
        if found is None:
            yield 0.0, None, None, None
            continue
        try:
            answer = found.group(group)
        except (IndexError, re.error):
            yield None, None, None, f"the pattern has no group {group!r}"
            continue
        if target is None:
            yield 1.0, answer, None, None
            continue
        same = _normalize_text(answer or "", scorer.normalize) == _normalize_text(
            target, scorer.normalize
        )
        yield float(same), answer, None, None


def _choice(
    scorer: ChoiceScorer, rows: pl.DataFrame
) -> Iterator[tuple[float | None, str | None, str | None, str | None]]:
    pattern = re.compile(scorer.pattern)
    for text, target in zip(rows["completion"], _texts(rows, scorer.target), strict=True):
        if target is None:
            yield None, None, None, _NO_TARGET
            continue
        found = pattern.search(text or "")
        letter = next((g for g in found.groups() if g), None) if found is not None else None
        if letter is None:
            yield 0.0, None, "no choice letter found in the completion", None
            continue
        yield float(letter.strip().upper() == target.strip().upper()), letter, None, None


def _schema(scorer: JsonScorer, base_dir: Path) -> Callable[[Any], str | None] | None:
    """A check of a parsed value against the scorer's schema: None, or the first problem."""
    schema = scorer.schema_
    if schema is None:
        return None
    import jsonschema  # only a job with a schema pays for the import

    if isinstance(schema, str):
        path = base_dir / Path(schema).expanduser()
        try:
            schema = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise JobError(f"scorers {scorer.name}: schema: cannot read {path}: {exc}") from None
    if not isinstance(schema, dict):
        raise JobError(f"scorers {scorer.name}: schema: {scorer.schema_} holds no JSON object")
    try:
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise JobError(
            f"scorers {scorer.name}: schema is not a JSON schema: {exc.message}"
        ) from None
    validator = validator_class(schema)

    def check(value: Any) -> str | None:
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is None:
            return None
        where = "/".join(map(str, error.absolute_path)) or "(root)"
        return f"does not match the schema at {where}: {error.message}"

    return check


def _json(
    scorer: JsonScorer, rows: pl.DataFrame, base_dir: Path
) -> Iterator[tuple[float | None, str | None, str | None, str | None]]:
    check = _schema(scorer, base_dir)
    for text in rows["completion"]:
        try:
            value = json.loads(text or "")
        except ValueError as exc:
            yield 0.0, None, f"not JSON: {exc}", None
            continue
        problem = check(value) if check is not None else None
        yield (0.0 if problem else 1.0), None, problem, None


def _sql(scorer: SqlScorer, rows: pl.DataFrame) -> pl.DataFrame:
    try:
        score = rows.select(pl.sql_expr(scorer.expression).cast(pl.Float64).alias("score"))
    except pl.exceptions.PolarsError as exc:
        first = str(exc).strip().splitlines()[0]
        raise JobError(
            f"scorers {scorer.name}: expression {scorer.expression!r} cannot be evaluated: "
            f"{first} (columns: {', '.join(rows.columns)})"
        ) from None
    if score.height != rows.height:
        raise JobError(
            f"scorers {scorer.name}: expression {scorer.expression!r} gives one value for all "
            "rows (an aggregate); give an expression of each row's columns"
        )
    return score.with_columns(
        pl.lit(None, pl.String).alias("answer"),
        pl.lit(None, pl.String).alias("explanation"),
        pl.lit(None, pl.String).alias("error"),
    )


@contextmanager
def _importable_from(folder: Path) -> Iterator[None]:
    sys.path.insert(0, str(folder))
    try:
        yield
    finally:
        sys.path.remove(str(folder))


def _python(scorer: PythonScorer, rows: pl.DataFrame, base_dir: Path) -> pl.DataFrame:
    module_name, _, function_name = scorer.function.partition(":")
    where = f"scorers {scorer.name}: function {scorer.function}"
    with _importable_from(base_dir):
        try:
            function = getattr(importlib.import_module(module_name), function_name)
        except (ImportError, AttributeError) as exc:
            raise JobError(
                f"{where}: cannot import it ({exc}); the module is looked for beside the job "
                f"file ({base_dir}) and on the Python path"
            ) from None
    try:
        returned = function(rows)
    except Exception as exc:  # the user's code: any failure is theirs to fix, said plainly
        raise JobError(
            f"{where} raised {type(exc).__name__}: {exc}; the scores made so far are kept, "
            "fix it and run batchrun score again"
        ) from exc
    if isinstance(returned, pl.DataFrame):
        if "score" not in returned.columns:
            raise JobError(f"{where} returned a DataFrame without a score column")
        frame = returned
    else:
        frame = pl.DataFrame({"score": pl.Series(list(returned), dtype=pl.Float64, strict=False)})
    if frame.height != rows.height:
        raise JobError(
            f"{where} returned {frame.height} scores for {rows.height} rows; return one a row"
        )
    missing = [pl.lit(None, dtype).alias(c) for c, dtype in OUTPUT.items() if c not in frame]
    return frame.with_columns(missing).select(
        pl.col(c).cast(dtype, strict=False) for c, dtype in OUTPUT.items()
    )
