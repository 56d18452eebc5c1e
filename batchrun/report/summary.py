"""The summary of a run: counts, tokens, throughput and latency percentiles, as plain data.

Computed with polars from the tables ``load_run`` read; the result is a JSON-ready dict whose
keys are stable (scripts and dashboards read ``batchrun report --json``). Percentiles use linear
interpolation over the rows that have the value (timings exist only for ``ok`` rows) and were
sent: a response cache hit's timings are another run's. The sections a report adds when they
apply (variants side by side, ``--by``) are in ``sections.py``. This module neither prints nor
writes files.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import polars as pl

from batchrun.job.prices import DEFAULT_PRICES
from batchrun.record.cost import estimate_cost
from batchrun.report import activity
from batchrun.report.completions import output_lengths, picked_completions
from batchrun.report.load import RunData
from batchrun.schedule.spend import REPLACED

__all__ = [
    "PERCENTILES",
    "TIMINGS",
    "cost",
    "counts",
    "distribution",
    "judges_cost",
    "summarize",
    "to_json",
]

PERCENTILES = (0.5, 0.9, 0.99)
# Per-request timings summarised by percentiles: summary key → results column. The run's overall
# ``output_tokens_per_s`` is a single number; one stream's rate is ``stream_output_tokens_per_s``.
TIMINGS = {
    "ttft_s": "ttft_s",
    "tpot_s": "tpot_s",
    "e2e_s": "e2e_s",
    "queue_s": "queue_s",
    "stream_output_tokens_per_s": "output_tokens_per_s",
}


def summarize(run: RunData, *, picks: int = 5) -> dict[str, Any]:
    """The run's summary as a JSON-ready dict (see the README for every key); ``picks``
    completions of each kind (slowest, failed, random)."""
    results, attempts = run.results, run.attempts
    rows = results.height
    duration = active_duration_s(results)
    # Timings are of requests sent: a response cache hit's are another run's, measured then;
    # so are its output tokens, which this run did not generate.
    sent = ~results["cache_hit"]
    output_tokens = _sum(results["output_tokens"])
    generated = _sum(results["output_tokens"].filter(sent))
    # Filters of one column, never of the frame: a million-row frame copied is ~150 MB.
    failed_attempts = attempts["outcome"].filter(attempts["outcome"] != "ok")
    status = {"ok": 0, "error": 0, **counts(results["status"])}
    covered = activity.input_rows(run)
    unit, lengths = output_lengths(run)
    # Unmerged: the shards' states (the message lists them), the worst judging the outcome.
    worst = str(run.manifest.get("status") or "partial") if run.shards else run.state
    return {
        "run_dir": str(run.run_dir),
        "state": run.state,
        "state_line": activity.state_line(run.state, covered),
        "shards_line": run.manifest.get("message") if run.shards else None,
        "outcome": activity.outcome(
            run.state if worst == "complete" else worst, status["ok"], status["error"]
        ),
        "input": covered,
        "api": run.api,
        "run_ids": sorted(results["run_id"].drop_nulls().unique().to_list()),
        "models": sorted(results["model"].drop_nulls().unique().to_list()),
        "apis": sorted(results["api"].drop_nulls().unique().to_list()),
        "rows": rows,
        "cache_hits": rows - int(sent.sum()),
        "status": status,
        "stop_reasons": counts(results["stop_reason"]),
        "tokens": {"input": _sum(results["input_tokens"]), "output": output_tokens},
        "first_started_at": _iso(results["started_at"].min()),
        "last_finished_at": _iso(results["finished_at"].max()),
        "duration_s": duration,
        "requests_per_s": _ratio(rows, duration),
        "throughput": {
            "ok_per_s": _ratio(status["ok"], duration),
            "error_per_s": _ratio(status["error"], duration),
        },
        "output_tokens_per_s": _ratio(generated, duration),
        "output_length": {"unit": unit, **distribution(lengths)},
        "concurrency": activity.concurrency(run, duration),
        "over_time": activity.over_time(run),
        **{key: distribution(results[column].filter(sent)) for key, column in TIMINGS.items()},
        "attempts": {
            "total": _int(results["attempts"].sum()),
            "retries": _int((results["attempts"] - 1).clip(lower_bound=0).sum()),
            "rows_retried": int((results["attempts"] > 1).sum()),
            "max_per_row": _int(results["attempts"].max()),
        },
        "retry_wait_s": {
            "total": _float(results["retry_wait_s"].sum()),
            "max": _float(results["retry_wait_s"].max()),
        },
        "errors": counts(results["error_type"].filter(results["status"] == "error")),
        "failed_attempts": counts(failed_attempts),
        "cost": cost(run),
        "completions": picked_completions(run, picks),
    }


def cost(run: RunData) -> dict[str, Any]:
    """The cost estimate of the rows, priced with the job's table and mode as run.json holds
    them (the default table and ``stream`` when it holds none): run.json's ``cost``. A folder
    with judges' requests (``judge/<scorer>/``) adds ``judges`` (:func:`judges_cost`) and
    ``total_usd``, the generation's ``cost_usd`` and the judges' together: what the spend cap
    counts. A folder where ``--rerun-changed`` or ``--retry-errors`` replaced rows adds
    ``replaced_usd`` (run.json's: what the replaced rows had cost; the cap counts it too) to
    ``total_usd``."""
    job = run.job
    table = job.get("prices")
    prices: Mapping[str, Any] = DEFAULT_PRICES
    if isinstance(table, dict):
        prices = {
            name: price
            for name, price in table.items()
            if isinstance(price, dict)
            and all(isinstance(price.get(k), int | float) for k in ("input", "output"))
        }
    request = job.get("request")
    mode = request.get("mode") if isinstance(request, dict) else None
    generation = estimate_cost(run.results, prices, mode if isinstance(mode, str) else "stream")
    judges = judges_cost(run, prices)
    replaced = run.manifest.get(REPLACED)
    added: dict[str, Any] = {"judges": judges} if judges is not None else {}
    if isinstance(replaced, int | float) and replaced > 0:
        added[REPLACED] = float(replaced)
    if not added:
        return generation
    parts = [generation["cost_usd"], judges and judges["cost_usd"], added.get(REPLACED)]
    total = None if all(p is None for p in parts) else sum(p or 0.0 for p in parts)
    return {**generation, **added, "total_usd": total}


def judges_cost(run: RunData, prices: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the judges of ``kind: model`` scorers cost: ``cost_usd`` (the sum of their rows'
    ``cost_usd``, at the streaming rate: a judge streams), ``requests`` (``cache_hits`` of them
    answered by the response cache, sending nothing and costing nothing), ``input_tokens``,
    ``output_tokens``, ``unpriced_models``, and the same per scorer under ``scorers``. Every
    request a judge sent counts, a judgement replaced since too, as in the spend cap. None
    when the folder has no judges' requests."""
    scorers = []
    for scorer, rows in run.scan_judges().items():
        has_hits = "cache_hit" in rows.collect_schema().names()
        hits = pl.col("cache_hit").fill_null(False).sum() if has_hits else pl.lit(0)
        requests, cache_hits = rows.select(pl.len(), hits).collect().row(0)
        if not requests:
            continue
        spent = estimate_cost(rows, prices, "stream")
        scorers.append(
            {
                "scorer": scorer,
                "requests": requests,
                "cache_hits": int(cache_hits),
                **{k: spent[k] for k in ("input_tokens", "output_tokens", "cost_usd")},
                "unpriced_models": spent["unpriced_models"],
            }
        )
    if not scorers:
        return None

    def total(key: str) -> Any:
        values = [s[key] for s in scorers if s[key] is not None]
        return sum(values) if values else None

    return {
        "cost_usd": total("cost_usd"),
        "requests": total("requests"),
        "cache_hits": total("cache_hits"),
        "input_tokens": total("input_tokens"),
        "output_tokens": total("output_tokens"),
        "unpriced_models": sorted({m for s in scorers for m in s["unpriced_models"]}),
        "scorers": scorers,
    }


def active_duration_s(results: pl.DataFrame) -> float:
    """Wall time the run was active: per session (run_id), first start to last finish, summed.

    A resumed run has one run_id per session; the pause between sessions is not counted.
    """
    spans = (
        results.select("run_id", "started_at", "finished_at")
        .drop_nulls(["started_at", "finished_at"])
        .group_by("run_id")
        .agg(span=pl.col("finished_at").max() - pl.col("started_at").min())
    )
    if spans.is_empty():
        return 0.0
    return float(spans["span"].dt.total_microseconds().sum()) / 1e6


def distribution(values: pl.Series) -> dict[str, float | int | None]:
    """count, mean, p50, p90, p99 and max of the non-null values (null when there are none)."""
    present = values.drop_nulls().drop_nans() if values.dtype.is_float() else values.drop_nulls()
    stats: dict[str, float | int | None] = {"count": present.len()}
    stats["mean"] = _float(present.mean()) if present.len() else None
    for q in PERCENTILES:
        key = f"p{round(q * 100)}"
        stats[key] = _float(present.quantile(q, "linear")) if present.len() else None
    stats["max"] = _float(present.max()) if present.len() else None
    return stats


def counts(values: pl.Series) -> dict[str, int]:
    """Occurrences of each non-null value, most frequent first (ties by value)."""
    table = (
        values.drop_nulls()
        .value_counts(name="n")
        .sort(["n", values.name], descending=[True, False])
    )
    return {str(key): int(n) for key, n in table.iter_rows()}


def to_json(payload: Mapping[str, Any]) -> str:
    """JSON text for stdout: NaN and infinities become null (JSON has neither)."""
    return json.dumps(_finite(payload), indent=2, ensure_ascii=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def _ratio(numerator: int | None, denominator: float) -> float | None:
    if numerator is None or denominator <= 0:
        return None
    return numerator / denominator


def _sum(values: pl.Series) -> int | None:
    """The sum, or null when no row has a value (the legacy API reports no token counts)."""
    return None if values.null_count() == values.len() else int(values.sum())


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def _iso(value: Any) -> str | None:
    return None if value is None else str(value.isoformat())
