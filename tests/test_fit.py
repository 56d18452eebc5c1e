"""What a request may take: refused at once when it can never fit, all given back when unused.

Budget-level tests run on a fake clock that only the injected sleep moves; the runs go through
the simulator on loopback with the same fake time injected, so a debt would show as seconds
slept, never waited for real.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.apis import APIS
from batchrun.apis.anthropic import classify
from batchrun.clock import Clock
from batchrun.errors import RetryableError
from batchrun.job.schema import load_job
from batchrun.models import Attempt
from batchrun.run import run_job
from batchrun.schedule.limits import MemoryStore, RateBudget, RequestTooLargeError
from batchrun.schedule.limits.fit import MAX_BODY_BYTES
from tests.conftest import FakeTime, JobWriter

BODY: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "x" * 40}],
}  # 13 input tokens by the estimate, 100 output tokens reserved


def _budget(t: FakeTime, **limits: int) -> RateBudget:
    configured = {k.removesuffix("_per_minute"): v for k, v in limits.items()}
    return RateBudget(
        configured,
        lambda _m: MemoryStore(t),
        cost=APIS["messages"],
        max_concurrency=4,
        clock=t,
        sleep=t.sleep,
    )


def _body(chars: int, max_tokens: int = 100) -> dict[str, Any]:
    return {
        **BODY,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "x" * chars}],
    }


def _refused(status: int | None, error_type: str) -> Attempt:
    if status is None:
        return Attempt(error=RetryableError(error_type, "ConnectError: connection refused"))
    return Attempt(http_status=status, error=classify(error_type, "m", http_status=status))


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (413, "request_too_large"),
        (400, "invalid_request_error"),
        (529, "overloaded_error"),
        (500, "api_error"),
        (None, "connection_error"),
    ],
)
async def test_an_attempt_the_server_did_no_work_for_gives_everything_back(
    status: int | None, error_type: str
) -> None:
    """After a refused or unanswered attempt, the next request goes at once: no request, input
    or output tokens stay taken."""
    t = FakeTime()
    budget = _budget(
        t, requests_per_minute=60, input_tokens_per_minute=600, output_tokens_per_minute=6000
    )
    first = await budget.acquire(BODY)  # the buckets start empty: this one waits 1.3 s
    budget.settle(first, _refused(status, error_type))
    before = sum(t.slept)
    second = await budget.acquire(BODY)
    assert sum(t.slept) == before
    budget.settle(second, _refused(status, error_type))


async def test_an_attempt_that_streamed_keeps_what_it_used() -> None:
    """An error after HTTP 200 used its input: the next request waits for the refill."""
    t = FakeTime()
    budget = _budget(t, input_tokens_per_minute=600)
    first = await budget.acquire(BODY)
    error = classify("overloaded_error", "m", http_status=200)
    budget.settle(first, Attempt(http_status=200, error=error, output_tokens_seen=5))
    before = sum(t.slept)
    await budget.acquire(BODY)
    assert sum(t.slept) - before == pytest.approx(1.3)


@pytest.mark.parametrize(
    ("body", "limits", "error_type", "says"),
    [
        (_body(4000), {"input_tokens_per_minute": 600}, "rate_limit_error", "input tokens"),
        (_body(40, 200), {"output_tokens_per_minute": 100}, "rate_limit_error", "max_tokens"),
        (
            _body(MAX_BODY_BYTES + 1),
            {"input_tokens_per_minute": 400_000},
            "request_too_large",
            "MB, over the API's 32 MB limit",
        ),
    ],
)
async def test_a_request_beyond_a_whole_minute_of_a_limit_is_refused_at_once(
    body: dict[str, Any], limits: dict[str, int], error_type: str, says: str
) -> None:
    """Needing more than a bucket's per-minute limit, a request is refused without waiting or
    taking anything, with the error type the API would answer; its slot is free again."""
    t = FakeTime()
    budget = _budget(t, **limits)
    with pytest.raises(RequestTooLargeError) as refused:
        await budget.acquire(body)
    assert refused.value.error_type == error_type
    assert says in refused.value.message
    assert "not sent" in refused.value.message
    assert t.slept == []
    assert budget.snapshot()["in_flight"] == 0
    await budget.acquire(BODY)  # what fits still goes


def _run(write_job: JobWriter, tmp_path: Path, big_chars: int, extra: dict[str, Any]) -> Any:
    """A job of one big row then five small ones, at concurrency 1, on fake time."""
    path = write_job(rows=6, extra={"limits": {"concurrency": 1, "shared": False}, **extra})
    rows = ["id,question", f"big,{'x' * big_chars}"] + [
        f"r{i},What is {i} + {i}?" for i in range(5)
    ]
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    t = FakeTime()
    outcome = asyncio.run(run_job(load_job(path), clock=Clock(monotonic=t), sleep=t.sleep))
    return outcome, pl.read_parquet(outcome.run_dir / "results.parquet").sort("id"), t


def test_a_request_larger_than_the_limit_becomes_an_error_row_and_leaves_no_debt(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """~100k estimated input tokens against 60,000 a minute: an error row at once (not sent),
    and the small rows after it wait for nothing like the 99 s the debt would have cost."""
    limits = {"limits": {"concurrency": 1, "shared": False, "input_tokens_per_minute": 60_000}}
    outcome, results, t = _run(write_job, tmp_path, 400_000, limits)
    big = results.filter(pl.col("id") == "big").row(0, named=True)
    assert (big["status"], big["error_type"], big["http_status"]) == (
        "error",
        "rate_limit_error",
        None,
    )
    assert "60,000 input tokens per minute" in big["error_message"]
    assert results.filter(pl.col("id") != "big")["status"].to_list() == ["ok"] * 5
    assert outcome.exit_code == 1
    assert sum(t.slept) < 5.0


def test_a_413_gives_its_tokens_back_for_the_rows_after_it(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """A body the server refuses as too large (413) returns its ~10k input tokens at once: the
    rows after it do not wait out a debt of 9 s."""
    extra = {
        "limits": {"concurrency": 1, "shared": False, "input_tokens_per_minute": 60_000},
        "sim": {"max_body_bytes": 20_000},
    }
    _, results, t = _run(write_job, tmp_path, 40_000, extra)
    big = results.filter(pl.col("id") == "big").row(0, named=True)
    assert (big["error_type"], big["http_status"], big["attempts"]) == ("request_too_large", 413, 1)
    assert results.filter(pl.col("id") != "big")["status"].to_list() == ["ok"] * 5
    assert sum(t.slept) < 5.0
