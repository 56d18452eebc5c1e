"""The report's scores: per variant and scorer, the mean with its 95% interval, pass@k and the
share not scored; for every pair of variants, the paired difference and whether it is
distinguishable from noise; with ``--by COLUMN``, the means per value of an input column.

Reads ``scores.parquet`` (the folder's only file this module reads beside the input, for
``--by``, through ``inputs.py``); the statistics are :mod:`batchrun.score.stats`'. Renders its
own text lines and HTML panel, so the summary's modules only call it.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from itertools import combinations
from typing import Any

import polars as pl

from batchrun.report.inputs import NOT_IN_INPUT, input_column
from batchrun.report.load import RunData
from batchrun.score.command import ROW_ERROR, read_scores
from batchrun.score.stats import (
    ALPHA,
    bootstrap_mean,
    mcnemar,
    pass_at_k,
    sign_flip,
    wilson,
)

__all__ = ["render_scores_html", "render_scores_text", "score_section"]

_NOT_SCORED = (
    "no scores yet: the job names this scorer, and its scoring did not finish (the spend cap, "
    "an error) or has not run; batchrun score JOB.yaml scores the rows left"
)


def score_section(run: RunData, by: str | None = None) -> dict[str, Any] | None:
    """The scores of ``run`` for the summary (``None`` when the folder has no scores); of an
    unmerged sharded folder, every shard folder's."""
    scores = pl.concat([read_scores(path) for path in run.shards or (run.run_dir,)])
    named = [s.get("name") for s in run.job.get("scorers") or () if isinstance(s, dict)]
    # A scorer of the job with no score: its scoring stopped (the cap, an error) or never ran.
    missing = [str(n) for n in named if n and n not in set(scores["scorer"].to_list())]
    if scores.is_empty() and not missing:
        return None
    section: dict[str, Any] = {"scorers": [], "not_scored": missing}
    order = run.variants  # as the variants table has them: the job's order
    # The job's order of scorers, and each one's rows by key: the seeded draws meet the ids in
    # one order, so the figures do not move with the order a merge or a rescore wrote the rows.
    rank = {name: i for i, name in enumerate(named)}
    groups = sorted(scores.group_by("scorer"), key=lambda g: (rank.get(g[0][0], len(rank)), g[0]))
    for (scorer,), unordered in groups:
        rows = unordered.sort("id", "sample")
        present = set(rows["variant"].to_list())
        variants = [v for v in order if v in present] + sorted(present.difference(order))
        stats = [_variant(rows.filter(pl.col("variant") == v), v) for v in variants]
        pairs = [
            _pair(rows, a, b) for a, b in combinations(variants, 2)
        ]  # every pair, in order of appearance
        section["scorers"].append({"scorer": scorer, "variants": stats, "pairs": pairs})
    if by is not None:
        section["by"] = _breakdown(run, scores, by)
    return section


def _binary(values: pl.Series) -> bool:
    return bool(values.is_in([0.0, 1.0]).all())


def _mean(rows: pl.DataFrame) -> dict[str, Any]:
    """Mean and interval of the scored rows of one variant (and group)."""
    scored = rows.filter(pl.col("score").is_not_null())
    if scored.is_empty():
        return {"scored": 0, "mean": None, "low": None, "high": None, "method": None}
    values = scored["score"]
    repeated = scored["id"].n_unique() < scored.height  # samples > 1: ids are clusters
    if _binary(values) and not repeated:
        interval = wilson(int(values.sum()), scored.height)
    else:
        interval = bootstrap_mean(values.to_list(), scored["id"].to_list())
    return {
        "scored": scored.height,
        "mean": interval.mean,
        "low": interval.low,
        "high": interval.high,
        "method": interval.method,
    }


def _variant(rows: pl.DataFrame, variant: str) -> dict[str, Any]:
    row_errors = rows.filter(pl.col("error").str.starts_with(ROW_ERROR)).height
    unscored = rows["score"].null_count()
    stats = {
        "variant": variant,
        "rows": rows.height,
        **_mean(rows),
        "row_errors": row_errors,  # the result row ended in error
        "not_scored": unscored - row_errors,  # the scorer could not score it
        "error_share": unscored / rows.height,
        "binary": _binary(rows["score"].drop_nulls()),
        "pass_at_k": {},
    }
    scored = rows.filter(pl.col("score").is_not_null())
    if stats["binary"] and not scored.is_empty():
        per_id = scored.group_by("id").agg(
            pl.len().alias("n"), (pl.col("score") == 1).sum().alias("c")
        )
        top = int(per_id["n"].max())  # type: ignore[arg-type]
        for k in sorted({1, top}):
            usable = per_id.filter(pl.col("n") >= k)
            values = [pass_at_k(n, c, k) for n, c in usable.select("n", "c").iter_rows()]
            stats["pass_at_k"][str(k)] = sum(values) / len(values) if values else None
    return stats


def _pair(rows: pl.DataFrame, a: str, b: str) -> dict[str, Any]:
    """Variant ``b`` against ``a`` on the (id, sample) rows both scored."""
    both = (
        rows.filter(pl.col("variant") == a, pl.col("score").is_not_null())
        .select("id", "sample", pl.col("score").alias("a"))
        .join(
            rows.filter(pl.col("variant") == b, pl.col("score").is_not_null()).select(
                "id", "sample", pl.col("score").alias("b")
            ),
            on=["id", "sample"],
        )
        .sort("id", "sample")
    )
    pair: dict[str, Any] = {"a": a, "b": b, "rows": both.height}
    if both.is_empty():
        return {**pair, "difference": None, "verdict": "no row scored in both"}
    diffs = (both["b"] - both["a"]).to_list()
    interval = bootstrap_mean(diffs, both["id"].to_list())
    one_each = both["id"].n_unique() == both.height
    if _binary(both["a"]) and _binary(both["b"]) and one_each:
        test = mcnemar(both["a"].cast(pl.Int64).to_list(), both["b"].cast(pl.Int64).to_list())
    else:
        per_id = both.group_by("id", maintain_order=True).agg(
            (pl.col("b") - pl.col("a")).mean().alias("d")
        )
        test = sign_flip(per_id["d"].to_list())
    distinct = test.p_value < ALPHA
    if distinct:
        side = "higher" if interval.mean > 0 else "lower"
        verdict = (
            f"{b} scores {side} than {a}: distinguishable from noise at this sample size "
            f"(p = {test.p_value:.3g})"
        )
    else:
        verdict = (
            f"not distinguishable from noise at this sample size (p = {test.p_value:.3g}); "
            "more rows are needed to tell them apart, if they differ"
        )
    return {
        **pair,
        "difference": interval.mean,
        "low": interval.low,
        "high": interval.high,
        "test": test.name,
        "statistic": test.statistic,
        "p_value": test.p_value,
        "distinguishable": distinct,
        "verdict": verdict,
    }


def _breakdown(run: RunData, scores: pl.DataFrame, column: str) -> dict[str, Any]:
    """Mean scores per value of the input ``column``, per scorer and variant."""
    inputs, _ = input_column(run, column)
    groups = inputs.select("id", pl.col("value").alias(column)).unique("id", keep="first")
    joined = scores.join(groups.collect(), on="id", how="left").with_columns(
        pl.col(column).fill_null(NOT_IN_INPUT)
    )
    rows = []
    for (scorer, variant, value), part in joined.group_by(
        "scorer", "variant", column, maintain_order=True
    ):
        rows.append({"scorer": scorer, "variant": variant, "value": value, **_mean(part)})
    rows.sort(key=lambda r: (r["scorer"], str(r["value"]), r["variant"]))
    return {"column": column, "groups": rows}


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _interval(s: Mapping[str, Any]) -> str:
    if s.get("mean") is None:
        return "-"
    return f"{s['mean']:.3f} [{s['low']:.3f}, {s['high']:.3f}]"


def render_scores_text(section: Mapping[str, Any]) -> str:
    """The scores as terminal lines: a table per scorer, then its comparisons."""
    lines = ["scores (mean [95% interval])"]
    for scorer in section["scorers"]:
        lines.append(f"\n{scorer['scorer']}")
        width = max([len(v["variant"]) for v in scorer["variants"]] + [7]) + 2
        lines.append(
            f"  {'variant':<{width}}{'rows':>7}{'scored':>8}  {'mean [95% CI]':<24}"
            f"{'method':<11}{'errors':>8}{'error %':>9}  pass@k"
        )
        for v in scorer["variants"]:
            passes = " ".join(f"@{k} {_num(p)}" for k, p in v["pass_at_k"].items())
            lines.append(
                f"  {v['variant']:<{width}}{v['rows']:>7,}{v['scored']:>8,}  "
                f"{_interval(v):<24}{v['method'] or '-':<11}"
                f"{v['row_errors'] + v['not_scored']:>8,}{100 * v['error_share']:>8.1f}%  "
                f"{passes or '-'}"
            )
        for p in scorer["pairs"]:
            if p["difference"] is None:
                lines.append(f"  {p['b']} vs {p['a']}: {p['verdict']}")
                continue
            lines.append(
                f"  {p['b']} - {p['a']}: {p['difference']:+.3f} "
                f"[{p['low']:+.3f}, {p['high']:+.3f}] on {p['rows']:,} paired rows, "
                f"{p['test']}: {p['verdict']}"
            )
    for name in section["not_scored"]:
        lines.append(f"\n{name}\n  {_NOT_SCORED}")
    if "by" in section:
        by = section["by"]
        lines.append(f"\nscores by {by['column']}")
        for g in by["groups"]:
            lines.append(
                f"  {g['scorer']}  {g['variant']}  {g['value']}: {_interval(g)} "
                f"({g['scored']:,} scored)"
            )
    return "\n".join(lines)


def render_scores_html(section: Mapping[str, Any]) -> str:
    """The scores as an HTML fragment: a table per scorer and its comparisons."""
    parts = []
    heads = ["rows", "scored", "mean", "95% interval", "method", "errors", "error %", "pass@k"]
    for scorer in section["scorers"]:
        head = "<tr><th>variant</th>" + "".join(f'<th class="n">{h}</th>' for h in heads)
        body = []
        for v in scorer["variants"]:
            passes = " ".join(f"@{k} {_num(p)}" for k, p in v["pass_at_k"].items()) or "-"
            span = "-" if v["mean"] is None else f"{v['low']:.3f} to {v['high']:.3f}"
            cells = [
                f"{v['rows']:,}",
                f"{v['scored']:,}",
                _num(v["mean"]),
                span,
                v["method"] or "-",
                f"{v['row_errors'] + v['not_scored']:,}",
                f"{100 * v['error_share']:.1f}",
                passes,
            ]
            body.append(
                f"<tr><td>{escape(v['variant'])}</td>"
                + "".join(f'<td class="n">{escape(c)}</td>' for c in cells)
                + "</tr>"
            )
        pairs = "".join(
            f"<li>{escape(p['b'])} - {escape(p['a'])}: "
            + (
                f"{p['difference']:+.3f} [{p['low']:+.3f}, {p['high']:+.3f}] on "
                f"{p['rows']:,} paired rows, {escape(p['test'])}: "
                if p["difference"] is not None
                else ""
            )
            + f"{escape(p['verdict'])}</li>"
            for p in scorer["pairs"]
        )
        parts.append(
            f'<h3>{escape(scorer["scorer"])}</h3><div class="scroll"><table>{head}</tr>'
            f"{''.join(body)}</table></div>" + (f"<ul>{pairs}</ul>" if pairs else "")
        )
    parts += [
        f"<h3>{escape(name)}</h3><p>{escape(_NOT_SCORED)}</p>" for name in section["not_scored"]
    ]
    return "".join(parts)
