"""The price table of the cost line: what a model costs per million tokens.

Part of the job file (its ``prices:`` section overrides or extends :data:`DEFAULT_PRICES`, which
is the model catalogue's, :mod:`batchrun.job.catalogue`). Pure data: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from batchrun.job.catalogue import models
from batchrun.job.sections import Section

__all__ = ["DEFAULT_PRICES", "CacheRates", "ModelPrice"]


class ModelPrice(Section):
    """What a model costs, in USD per million tokens at the standard (streaming) rate.

    Message Batches bill half of both rates (``BATCH_DISCOUNT`` in :mod:`batchrun.record.cost`).
    """

    input: float = Field(ge=0.0, description="USD per million input tokens, e.g. input: 3.0")
    output: float = Field(ge=0.0, description="USD per million output tokens, e.g. output: 15.0")
    cache_write_5m: float | None = Field(
        default=None,
        ge=0.0,
        description="USD per million 5-minute cache-write tokens (1.25x input)",
    )
    cache_write_1h: float | None = Field(
        default=None, ge=0.0, description="USD per million 1-hour cache-write tokens (2x input)"
    )
    cache_read: float | None = Field(
        default=None, ge=0.0, description="USD per million cache-read tokens (0.1x input)"
    )

    def rates(self) -> CacheRates:
        """Every rate, a missing cache price following the API's multipliers of the input price."""
        return CacheRates(
            input=self.input,
            output=self.output,
            cache_write_5m=_or(self.cache_write_5m, self.input * CACHE_WRITE_5M),
            cache_write_1h=_or(self.cache_write_1h, self.input * CACHE_WRITE_1H),
            cache_read=_or(self.cache_read, self.input * CACHE_READ),
        )


# The API's cache multipliers of the input price: a 5-minute write, a 1-hour write, a read.
CACHE_WRITE_5M, CACHE_WRITE_1H, CACHE_READ = 1.25, 2.0, 0.1


@dataclass(frozen=True, slots=True)
class CacheRates:
    """A model's resolved rates in USD per million tokens, cache prices filled in."""

    input: float
    output: float
    cache_write_5m: float
    cache_write_1h: float
    cache_read: float


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


# The catalogue's list prices (USD per million tokens), under every name of each model; the job's
# ``prices:`` section overrides or extends it. A model matches its own key or the longest key
# followed by "-" (claude-sonnet-5-5-20261201 takes claude-sonnet-5-5's price).
DEFAULT_PRICES: dict[str, ModelPrice] = {
    name: info.price for info in models() if info.price is not None for name in info.names
}
