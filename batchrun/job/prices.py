"""The price table of the cost line: what a model costs per million tokens.

Part of the job file (its ``prices:`` section overrides or extends :data:`DEFAULT_PRICES`).
Pure data: no I/O.
"""

from __future__ import annotations

from pydantic import Field

from batchrun.job.sections import Section

__all__ = ["DEFAULT_PRICES", "ModelPrice"]


class ModelPrice(Section):
    """What a model costs, in USD per million tokens at the standard (streaming) rate.

    Message Batches bill half of both rates (``BATCH_DISCOUNT`` in :mod:`batchrun.record.cost`).
    """

    input: float = Field(ge=0.0, description="USD per million input tokens, e.g. input: 3.0")
    output: float = Field(ge=0.0, description="USD per million output tokens, e.g. output: 15.0")


# Anthropic's list prices (USD per million tokens) when this table was written; the job's
# ``prices:`` section overrides or extends it. A model matches its own key or the longest key
# followed by "-" (claude-sonnet-4-5-20250929 takes claude-sonnet-4-5's price).
DEFAULT_PRICES: dict[str, ModelPrice] = {
    name: ModelPrice(input=rates[0], output=rates[1])
    for name, rates in {
        "claude-opus-4-5": (5.0, 25.0),
        "claude-opus-4-1": (15.0, 75.0),
        "claude-opus-4": (15.0, 75.0),
        "claude-sonnet-4-5": (3.0, 15.0),
        "claude-sonnet-4": (3.0, 15.0),
        "claude-3-7-sonnet": (3.0, 15.0),
        "claude-haiku-4-5": (1.0, 5.0),
        "claude-3-5-haiku": (0.8, 4.0),
        "claude-3-haiku": (0.25, 1.25),
    }.items()
}
