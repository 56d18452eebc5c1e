"""The cost of a row and of a run: list prices with cache prices, batch at half, run.json's line."""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pytest

from batchrun.job.prices import CacheRates, ModelPrice
from batchrun.record.cost import COST_COLUMNS, cost_text, estimate_cost, rates_for, row_cost
from batchrun.report.load import load_run
from batchrun.report.summary import summarize
from batchrun.run import run_job
from tests.conftest import JobWriter
from tests.test_batch import StartSim, _job, _results

SONNET = ModelPrice(input=2.0, output=10.0)  # cache: 2.50 (5m), 4 (1h), 0.20 (read)
OPUS = ModelPrice(input=4.0, output=20.0, cache_write_5m=6.0, cache_write_1h=9.0, cache_read=0.5)
PRICES = {"claude-sonnet-5-5": SONNET, "claude-opus-5-5": OPUS}


def test_rates_fill_in_cache_prices_and_halve_in_batch_mode() -> None:
    """A missing cache price follows the input price's multipliers; batch halves every rate."""
    assert rates_for("claude-sonnet-5-5", PRICES) == CacheRates(2.0, 10.0, 2.5, 4.0, 0.2)
    assert rates_for("claude-opus-5-5-20261101", PRICES) == CacheRates(4.0, 20.0, 6.0, 9.0, 0.5)
    assert rates_for("claude-sonnet-5-5", PRICES, "batch") == CacheRates(1.0, 5.0, 1.25, 2.0, 0.1)
    assert rates_for("claude-haiku-5-5", PRICES) is None


def test_rates_from_run_json_dicts() -> None:
    """run.json holds prices as dicts, cache prices null when not set: the same rates."""
    table: dict[str, Any] = {"claude-sonnet-5-5": SONNET.model_dump()}
    assert table["claude-sonnet-5-5"]["cache_read"] is None
    assert rates_for("claude-sonnet-5-5", table) == rates_for("claude-sonnet-5-5", PRICES)


def test_a_row_costs_each_kind_of_token_at_its_rate() -> None:
    """Uncached input, 5m and 1h writes, reads and output, each at its own rate."""
    rates = rates_for("claude-opus-5-5", PRICES)
    cost = row_cost(
        rates,
        input_tokens=100,
        output_tokens=50,
        cache_read_input_tokens=1000,
        cache_creation_input_tokens=300,
        cache_creation_5m_input_tokens=100,
        cache_creation_1h_input_tokens=200,
    )
    assert cost == pytest.approx((100 * 4 + 100 * 6 + 200 * 9 + 1000 * 0.5 + 50 * 20) / 1e6)


def test_cache_writes_without_a_split_cost_the_5m_rate() -> None:
    """cache_creation_input_tokens alone (no TTL split sent) is priced as 5-minute writes."""
    rates = rates_for("claude-opus-5-5", PRICES)
    cost = row_cost(rates, input_tokens=0, output_tokens=0, cache_creation_input_tokens=300)
    assert cost == pytest.approx(300 * 6 / 1e6)


def test_no_price_or_no_usage_is_no_cost() -> None:
    """Without rates, or without any token count (the legacy API), a row has no cost."""
    assert row_cost(None, input_tokens=10, output_tokens=10) is None
    rates = rates_for("claude-opus-5-5", PRICES)
    assert row_cost(rates, input_tokens=None, output_tokens=None) is None


def _rows(*rows: dict[str, Any]) -> pl.DataFrame:
    return pl.DataFrame(
        [{**dict.fromkeys(COST_COLUMNS), **r} for r in rows], schema=dict(COST_COLUMNS)
    )


def test_the_run_sums_cost_usd_and_splits_out_the_cache() -> None:
    """cost_usd is the rows' own sum (not re-derived: a row's recorded cost wins); the cache
    keys count reads and writes, what they saved, and the hit rate; errors count nothing."""
    frame = _rows(
        {
            "model": "claude-sonnet-5-5",
            "input_tokens": 10,
            "output_tokens": 20,
            "cache_read_input_tokens": 1000,
            "cost_usd": 0.5,  # whatever the row says, as recorded
        },
        {
            "model": "claude-sonnet-5-5",
            "input_tokens": 30,
            "output_tokens": 5,
            "cache_creation_input_tokens": 400,
            "cache_creation_5m_input_tokens": 100,
            "cache_creation_1h_input_tokens": 300,
            "cost_usd": 0.25,
        },
        {"model": "claude-sonnet-5-5"},  # an error row: no tokens
    )
    cost = estimate_cost(frame, PRICES, "stream")
    assert cost["cost_usd"] == 0.75
    assert (cost["stream_usd"], cost["batch_usd"]) == (0.75, 0.375)
    assert (cost["input_tokens"], cost["output_tokens"]) == (40, 25)
    assert (cost["cache_read_input_tokens"], cost["cache_creation_input_tokens"]) == (1000, 400)
    saved = (1000 * (2 - 0.2) + 100 * (2 - 2.5) + 300 * (2 - 4)) / 1e6
    assert cost["cache_saved_usd"] == pytest.approx(saved, abs=1e-6)
    assert cost["cache_hit_rate"] == pytest.approx(1000 / (40 + 400 + 1000), abs=1e-6)


def test_batch_mode_costs_are_the_batch_rate() -> None:
    """In batch mode the rows' cost_usd is the batch price: stream_usd is twice it."""
    frame = _rows(
        {"model": "claude-sonnet-5-5", "input_tokens": 1, "output_tokens": 1, "cost_usd": 0.3}
    )
    cost = estimate_cost(frame, PRICES, "batch")
    assert (cost["cost_usd"], cost["batch_usd"], cost["stream_usd"]) == (0.3, 0.3, 0.6)


def test_rows_from_before_cost_usd_are_priced_from_their_tokens() -> None:
    """A results file of the first release (model and token columns only) is priced as before."""
    old = pl.DataFrame(
        {
            "model": ["claude-sonnet-5-5", "claude-haiku-5-5"],
            "input_tokens": [1000, 5],
            "output_tokens": [100, 5],
        }
    )
    cost = estimate_cost(old.lazy(), PRICES, "stream")
    assert cost["cost_usd"] == pytest.approx((1000 * 2 + 100 * 10) / 1e6)
    assert cost["unpriced_models"] == ["claude-haiku-5-5"]
    assert (cost["input_tokens"], cost["cache_read_input_tokens"]) == (1005, 0)
    assert cost["cache_hit_rate"] == 0.0


def test_no_usage_at_all_is_a_null_cost() -> None:
    """The legacy API reports no usage: every figure is null."""
    cost = estimate_cost(_rows({"model": "claude-2.1"}), PRICES, "stream")
    assert cost["cost_usd"] is None
    assert cost["cache_saved_usd"] is None
    assert cost["cache_hit_rate"] is None
    assert cost_text(cost) is None


def test_the_closing_line_shows_the_cost_and_the_cache_saving() -> None:
    """The cost in words; the cache part only when the cache did something."""
    plain = {"cost_usd": 1.5, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    assert cost_text({**plain, "unpriced_models": []}) == "cost $1.500000"
    cached = {
        **plain,
        "cache_read_input_tokens": 900,
        "cache_saved_usd": 0.25,
        "cache_hit_rate": 0.9,
        "unpriced_models": ["m"],
    }
    assert cost_text(cached) == (
        "cost $1.500000 (prompt cache saved $0.250000, hit rate 90.0%); no price for m"
    )


async def test_batch_rows_cost_half_the_list_price(
    write_job: JobWriter, sim_server: StartSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch-mode run on the simulator: every row's cost_usd is half its list price, and
    run.json and the report agree on the sum."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    prices = {"claude-sonnet-4-5": {"input": 2.0, "output": 10.0}}
    outcome = await run_job(_job(write_job, sim_server(), prices=prices))
    results = _results(outcome)
    assert results["status"].unique().to_list() == ["ok"]
    for row in results.iter_rows(named=True):
        half = (row["input_tokens"] * 2 + row["output_tokens"] * 10) / 1e6 / 2
        assert row["cost_usd"] == pytest.approx(half)
        assert row["ttft_text_s"] is None  # a batch has no per-request timing
    cost = json.loads((outcome.run_dir / "run.json").read_text())["cost"]
    assert cost["cost_usd"] == pytest.approx(results["cost_usd"].sum(), abs=5e-7)
    assert cost["batch_usd"] == cost["cost_usd"]
    assert summarize(load_run(outcome.run_dir))["cost"] == cost
