"""The model catalogue: lookups by id, alias and snapshot, its data's consistency, the prices."""

from __future__ import annotations

import datetime

import pytest

from batchrun.job.catalogue import lookup, models
from batchrun.job.prices import DEFAULT_PRICES
from batchrun.record.cost import price_for


def test_current_models_are_active_with_their_documented_limits() -> None:
    """The four current models are active, with 1M context and 128K output."""
    for name in ("claude-fable-5-2", "claude-opus-5-5", "claude-sonnet-5-5", "claude-haiku-5-5"):
        info = lookup(name)
        assert info is not None, name
        assert (info.status, info.context_window, info.max_output) == (
            "active",
            1_000_000,
            128_000,
        )
        assert info.sampling is False


@pytest.mark.parametrize(
    ("name", "found"),
    [
        ("claude-sonnet-5-5", "claude-sonnet-5-5"),
        ("claude-sonnet-5-5-20261201", "claude-sonnet-5-5"),  # a dated snapshot of an id
        ("claude-haiku-4-5", "claude-haiku-4-5-20251001"),  # an alias
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5-20251001"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5-20250929"),
        ("claude-sonnet-5", "claude-sonnet-5"),  # not taken for claude-sonnet-5-5
    ],
)
def test_lookup_by_id_alias_or_snapshot(name: str, found: str) -> None:
    """A model is found by its id, an alias, or a dated snapshot of either."""
    info = lookup(name)
    assert info is not None
    assert info.id == found


@pytest.mark.parametrize("name", ["claude-sonnet-9", "gpt-4o", "claude-sonnet-5-5-2026", ""])
def test_unknown_names_are_none(name: str) -> None:
    """An id the catalogue does not know is None, never a near match."""
    assert lookup(name) is None


def test_sonnet_4_5_is_retired_with_date_and_successor() -> None:
    """claude-sonnet-4-5 retired on 2026-11-30; its successor is claude-sonnet-5-5."""
    info = lookup("claude-sonnet-4-5")
    assert info is not None
    assert info.status == "retired"
    assert info.retired_on == datetime.date(2026, 11, 30)
    assert info.successor == "claude-sonnet-5-5"


def test_every_entry_is_consistent() -> None:
    """Names are unique; retired and deprecated models have a date and a current successor."""
    names = [name for info in models() for name in info.names]
    assert len(names) == len(set(names))
    for info in models():
        assert info.max_output <= info.context_window
        if info.status in ("retired", "deprecated"):
            assert info.retired_on is not None
            assert info.successor is not None
            successor = lookup(info.successor)
            assert successor is not None
            assert successor.status == "active"
        else:
            assert info.retired_on is None


def test_sonnet_5_5_prices_as_documented() -> None:
    """Sonnet 5.5: $2 in, $10 out, $2.50 and $4 cache writes, $0.20 cache reads."""
    rates = DEFAULT_PRICES["claude-sonnet-5-5"].rates()
    assert (rates.input, rates.output) == (2.0, 10.0)
    assert (rates.cache_write_5m, rates.cache_write_1h, rates.cache_read) == (2.5, 4.0, 0.2)


def test_default_prices_cover_every_priced_name() -> None:
    """Every id and alias of a priced model has a default price, and snapshots match them."""
    for info in models():
        for name in info.names:
            assert (name in DEFAULT_PRICES) == (info.price is not None)
    assert price_for("claude-opus-5-5-20261124", DEFAULT_PRICES) == (4.0, 20.0)
    assert price_for("claude-sonnet-5", DEFAULT_PRICES) == (2.0, 10.0)
