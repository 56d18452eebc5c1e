"""The cost of rows: each row's ``cost_usd`` at list prices, and the run's cost line over them.

Prices come from the job's price table (``prices:``, over :data:`~batchrun.job.DEFAULT_PRICES`),
in USD per million tokens; a missing cache price follows the API's multipliers of the input
price (:meth:`~batchrun.job.prices.ModelPrice.rates`). Message Batches bill
:data:`BATCH_DISCOUNT` of every rate. A model takes its own entry or the longest entry that is a
prefix of its name followed by ``-``. An estimate, not a bill: long-context surcharges, server
tool fees and taxes are not modelled. Pure arithmetic (over polars for the run); it reads and
writes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import polars as pl

from batchrun.job.prices import CacheRates, ModelPrice

__all__ = [
    "BATCH_DISCOUNT",
    "COST_COLUMNS",
    "cost_text",
    "estimate_cost",
    "price_for",
    "rates_for",
    "row_cost",
]

BATCH_DISCOUNT = 0.5

# The results columns the cost line reads.
COST_COLUMNS: Mapping[str, pl.DataType | type[pl.DataType]] = {
    "model": pl.String,
    "input_tokens": pl.Int64,
    "output_tokens": pl.Int64,
    "cache_read_input_tokens": pl.Int64,
    "cache_creation_input_tokens": pl.Int64,
    "cache_creation_5m_input_tokens": pl.Int64,
    "cache_creation_1h_input_tokens": pl.Int64,
    "cost_usd": pl.Float64,
}
_PRICE_KEYS = frozenset(ModelPrice.model_fields)


def _entry(model: str, prices: Mapping[str, Any]) -> Any:
    names = [k for k in prices if model == k or model.startswith(f"{k}-")]
    return prices[max(names, key=len)] if names else None


def price_for(model: str, prices: Mapping[str, Any]) -> tuple[float, float] | None:
    """(input, output) USD per million tokens for ``model``, or ``None`` if the table lacks it.

    ``prices`` maps a model name to ``ModelPrice`` objects or to ``{"input", "output", ...}``
    dicts (as run.json holds them).
    """
    rates = rates_for(model, prices)
    return None if rates is None else (rates.input, rates.output)


def rates_for(model: str, prices: Mapping[str, Any], mode: str = "stream") -> CacheRates | None:
    """Every rate of ``model`` (cache prices filled in) at ``mode``'s rate: ``batch`` is
    :data:`BATCH_DISCOUNT` of each. ``None`` when the table has no price for it."""
    price = _entry(model, prices)
    if price is None:
        return None
    if isinstance(price, Mapping):
        price = ModelPrice.model_validate(
            {k: v for k, v in price.items() if k in _PRICE_KEYS and v is not None}
        )
    rates: CacheRates = price.rates()
    if mode != "batch":
        return rates
    return CacheRates(
        **{f.name: getattr(rates, f.name) * BATCH_DISCOUNT for f in dataclasses.fields(rates)}
    )


def _writes(
    creation: int | None, five_minutes: int | None, one_hour: int | None
) -> tuple[int, int]:
    """Cache-write tokens as (5-minute, 1-hour): the TTL split when the API sent one, else
    the whole ``cache_creation_input_tokens`` at the 5-minute rate (the default TTL)."""
    if five_minutes is None and one_hour is None:
        return creation or 0, 0
    return five_minutes or 0, one_hour or 0


def row_cost(
    rates: CacheRates | None,
    *,
    input_tokens: int | None,
    output_tokens: int | None,
    cache_read_input_tokens: int | None = None,
    cache_creation_input_tokens: int | None = None,
    cache_creation_5m_input_tokens: int | None = None,
    cache_creation_1h_input_tokens: int | None = None,
) -> float | None:
    """One row's cost in USD: uncached input, cache writes (5-minute and 1-hour), cache reads
    and output, each at its rate. ``None`` without rates or without any usage (the legacy API
    reports none)."""
    if rates is None or (input_tokens is None and output_tokens is None):
        return None
    five, hour = _writes(
        cache_creation_input_tokens, cache_creation_5m_input_tokens, cache_creation_1h_input_tokens
    )
    return (
        (input_tokens or 0) * rates.input
        + five * rates.cache_write_5m
        + hour * rates.cache_write_1h
        + (cache_read_input_tokens or 0) * rates.cache_read
        + (output_tokens or 0) * rates.output
    ) / 1e6


def _with_cost_columns(results: pl.DataFrame | pl.LazyFrame) -> pl.LazyFrame:
    """The cost columns of ``results``; a folder written before a column existed reads it as
    nulls."""
    frame = results.lazy()
    have = frame.collect_schema().names()
    return frame.with_columns(
        pl.lit(None, dtype=dtype).alias(name)
        for name, dtype in COST_COLUMNS.items()
        if name not in have
    ).select(list(COST_COLUMNS))


def estimate_cost(
    results: pl.DataFrame | pl.LazyFrame, prices: Mapping[str, Any], mode: str
) -> dict[str, Any]:
    """The cost line of a run from its results rows: the tokens, what they cost, and what the
    prompt cache did.

    ``cost_usd`` (at this run's ``mode`` rate) is the sum of the rows' own ``cost_usd``; rows
    recorded before that column existed are priced from their tokens with ``prices``.
    ``stream_usd`` and ``batch_usd`` are that cost at each mode's rate. ``cache_saved_usd`` is
    what the cached tokens (reads and writes) would have cost as uncached input minus what they
    cost (negative when writes outweigh reads); ``cache_hit_rate`` is cache reads over all input
    (uncached, cache writes and cache reads). Only rows with token counts count (errors are not
    billed; the legacy API reports none, and then every figure is null). ``unpriced_models``
    lists models the table has no price for; their tokens are in the totals but not in the
    costs. A LazyFrame (a scan of a results file) is summed streaming, never read whole.
    """
    unrecorded = pl.col("cost_usd").is_null()
    no_split = (
        pl.col("cache_creation_5m_input_tokens").is_null()
        & pl.col("cache_creation_1h_input_tokens").is_null()
    )
    write_5m = (
        pl.when(no_split)
        .then(pl.col("cache_creation_input_tokens"))
        .otherwise(pl.col("cache_creation_5m_input_tokens"))
        .fill_null(0)
    )
    write_1h = pl.col("cache_creation_1h_input_tokens").fill_null(0)
    creation = pl.coalesce(
        pl.col("cache_creation_input_tokens"),
        pl.col("cache_creation_5m_input_tokens").fill_null(0)
        + pl.col("cache_creation_1h_input_tokens").fill_null(0),
    )
    tokens = {
        "input": pl.col("input_tokens").fill_null(0),
        "output": pl.col("output_tokens").fill_null(0),
        "read": pl.col("cache_read_input_tokens").fill_null(0),
        "write_5m": write_5m,
        "write_1h": write_1h,
    }
    by_model = (
        _with_cost_columns(results)
        .filter(pl.col("input_tokens").is_not_null() | pl.col("output_tokens").is_not_null())
        .group_by("model")
        .agg(
            *(expr.sum().alias(name) for name, expr in tokens.items()),
            creation.sum().alias("creation"),
            pl.col("cost_usd").sum().alias("recorded"),
            *(expr.filter(unrecorded).sum().alias(f"u_{name}") for name, expr in tokens.items()),
        )
        .sort("model")
        .collect(engine="streaming")
    )
    if by_model.is_empty():  # nothing counted (the legacy API): nothing to price
        return {
            "mode": mode,
            "input_tokens": None,
            "output_tokens": None,
            "cache_read_input_tokens": None,
            "cache_creation_input_tokens": None,
            "currency": "USD",
            "cost_usd": None,
            "stream_usd": None,
            "batch_usd": None,
            "cache_saved_usd": None,
            "cache_hit_rate": None,
            "unpriced_models": [],
        }
    total: dict[str, int] = dict.fromkeys(("input", "output", "read", "creation"), 0)
    cost = saved = 0.0
    unpriced: list[str] = []
    for row in by_model.iter_rows(named=True):
        for key in total:
            total[key] += row[key]
        rates = rates_for(row["model"] or "", prices, mode)
        if rates is None:
            unpriced.append(str(row["model"]))
            continue
        cost += row["recorded"] + (
            row_cost(
                rates,
                input_tokens=row["u_input"],
                output_tokens=row["u_output"],
                cache_read_input_tokens=row["u_read"],
                cache_creation_5m_input_tokens=row["u_write_5m"],
                cache_creation_1h_input_tokens=row["u_write_1h"],
            )
            or 0.0
        )
        saved += (
            row["read"] * (rates.input - rates.cache_read)
            + row["write_5m"] * (rates.input - rates.cache_write_5m)
            + row["write_1h"] * (rates.input - rates.cache_write_1h)
        ) / 1e6
    stream_usd = cost / BATCH_DISCOUNT if mode == "batch" else cost
    seen = total["input"] + total["creation"] + total["read"]
    return {
        "mode": mode,
        "input_tokens": total["input"],
        "output_tokens": total["output"],
        "cache_read_input_tokens": total["read"],
        "cache_creation_input_tokens": total["creation"],
        "currency": "USD",
        "cost_usd": round(cost, 6),
        "stream_usd": round(stream_usd, 6),
        "batch_usd": round(stream_usd * BATCH_DISCOUNT, 6),
        "cache_saved_usd": round(saved, 6),
        "cache_hit_rate": round(total["read"] / seen, 6) if seen else None,
        "unpriced_models": unpriced,
    }


def cost_text(cost: Mapping[str, Any]) -> str | None:
    """The cost for the run's closing line: ``$1.234567`` at this run's rate, and what the
    prompt cache saved when it did anything; ``None`` when there is no cost to tell."""
    usd = cost.get("cost_usd")
    if usd is None:
        return None
    text = f"cost ${usd:,.6f}"
    if cost.get("cache_read_input_tokens") or cost.get("cache_creation_input_tokens"):
        saved = cost.get("cache_saved_usd") or 0.0
        text += (
            f" (prompt cache saved ${saved:,.6f}"
            if saved >= 0
            else f" (prompt cache cost ${-saved:,.6f} more"
        )
        rate = cost.get("cache_hit_rate")
        if rate is not None:
            text += f", hit rate {rate:.1%}"
        text += ")"
    if cost.get("unpriced_models"):
        text += f"; no price for {', '.join(cost['unpriced_models'])}"
    return text
