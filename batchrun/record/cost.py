"""The cost estimate: tokens in and out, priced at the streaming and the batch rate.

Prices come from the job's price table (``prices:``, over :data:`~batchrun.job.DEFAULT_PRICES`),
in USD per million tokens; Message Batches bill :data:`BATCH_DISCOUNT` of both rates. A model
takes its own entry or the longest entry that is a prefix of its name followed by ``-``. An
estimate, not a bill: cache pricing, long-context surcharges and taxes are not modelled. Pure
arithmetic over polars; it reads and writes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import polars as pl

__all__ = ["BATCH_DISCOUNT", "estimate_cost", "price_for"]

BATCH_DISCOUNT = 0.5


def price_for(model: str, prices: Mapping[str, Any]) -> tuple[float, float] | None:
    """(input, output) USD per million tokens for ``model``, or ``None`` if the table lacks it.

    ``prices`` maps a model name to ``ModelPrice`` objects or to ``{"input", "output"}`` dicts
    (as run.json holds them).
    """
    names = [k for k in prices if model == k or model.startswith(f"{k}-")]
    if not names:
        return None
    price = prices[max(names, key=len)]
    if isinstance(price, Mapping):
        return float(price["input"]), float(price["output"])
    return float(price.input), float(price.output)


def estimate_cost(
    results: pl.DataFrame | pl.LazyFrame, prices: Mapping[str, Any], mode: str
) -> dict[str, Any]:
    """The cost line of a run from its results rows (``model``, ``input_tokens``,
    ``output_tokens``): the tokens, and what they cost at each mode's rate.

    Only rows with token counts count (errors are not billed; the legacy API reports none, and
    then every figure is null). ``unpriced_models`` lists models the table has no price for;
    their tokens are in the totals but not in the costs. A LazyFrame (a scan of a results file)
    is summed streaming, never read whole.
    """
    by_model = (
        results.lazy()
        .filter(pl.col("input_tokens").is_not_null() | pl.col("output_tokens").is_not_null())
        .group_by("model")
        .agg(pl.col("input_tokens").sum(), pl.col("output_tokens").sum())
        .sort("model")
        .collect(engine="streaming")
    )
    if by_model.is_empty():  # nothing counted (the legacy API): nothing to price
        return {
            "mode": mode,
            "input_tokens": None,
            "output_tokens": None,
            "currency": "USD",
            "stream_usd": None,
            "batch_usd": None,
            "unpriced_models": [],
        }
    tokens_in = tokens_out = 0
    stream_usd = 0.0
    unpriced: list[str] = []
    for model, used_in, used_out in by_model.iter_rows():
        tokens_in, tokens_out = tokens_in + used_in, tokens_out + used_out
        price = price_for(model or "", prices)
        if price is None:
            unpriced.append(str(model))
            continue
        stream_usd += (used_in * price[0] + used_out * price[1]) / 1e6
    return {
        "mode": mode,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "currency": "USD",
        "stream_usd": round(stream_usd, 6),
        "batch_usd": round(stream_usd * BATCH_DISCOUNT, 6),
        "unpriced_models": unpriced,
    }
