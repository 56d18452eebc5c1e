"""Budgets per model, as the API's limits are: buckets, learned limits and the 429 pause of one
model never hold back another; the same model shares across budgets on one store; the snapshot,
the progress line and the simulator follow.

Time is a fake clock that only the injected sleep moves, but for the Redis test (the server's
clock) and the one against the simulator on loopback.
"""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from batchrun.apis import APIS
from batchrun.apis.anthropic import classify
from batchrun.call.attempt import stream_attempt
from batchrun.call.endpoint import ApiClient
from batchrun.call.transport import AiohttpTransport
from batchrun.clock import Clock
from batchrun.job.sections import LimitsConfig
from batchrun.models import Attempt, Completion, RequestItem
from batchrun.schedule.limits import (
    BudgetWaitError,
    MemoryStore,
    RateBudget,
    Reservation,
    SqliteStore,
    make_budget,
    state_path,
)
from batchrun.sim.ratelimit import ServerLimiter
from batchrun.telemetry.progress import Progress
from tests import test_limits_redis
from tests.conftest import FakeTime

SONNET, HAIKU = "claude-sonnet-5-5", "claude-haiku-5-5"
FINGERPRINT = "ab" * 32
redis_url = test_limits_redis.redis_url  # the fixture: a fresh redis-server, or a skip


def _body(model: str) -> dict[str, Any]:
    return {"model": model, "max_tokens": 100, "messages": [{"role": "user", "content": "x" * 40}]}


def _budget(t: FakeTime, *, max_wait_s: float | None = None, **limits: int) -> RateBudget:
    return RateBudget(
        {k.removesuffix("_per_minute"): v for k, v in limits.items()},
        lambda _model: MemoryStore(t),
        cost=APIS["messages"],
        max_concurrency=8,
        clock=t,
        sleep=t.sleep,
        max_wait_s=max_wait_s,
    )


def _ok(headers: dict[str, str] | None = None) -> Attempt:
    done = Completion("hi", "end_turn", input_tokens=13, output_tokens=20)
    return Attempt(
        http_status=200, completion=done, output_tokens_seen=20, ratelimit_headers=headers or {}
    )


def _429(retry_after: float) -> Attempt:
    error = classify("rate_limit_error", "m", http_status=429, retry_after=retry_after)
    return Attempt(http_status=429, error=error)


def _requests_headers(limit: int, remaining: int) -> dict[str, str]:
    return {
        "anthropic-ratelimit-requests-limit": str(limit),
        "anthropic-ratelimit-requests-remaining": str(remaining),
    }


async def _go(budget: RateBudget, model: str, attempt: Attempt | None = None) -> Reservation:
    """Acquire for ``model`` and settle at once (with ``attempt``, by default a success)."""
    reservation = await budget.acquire(_body(model))
    budget.settle(reservation, attempt or _ok())
    return reservation


class _Gate(FakeTime):
    """A fake clock whose sleep, once ``shut``, waits until the test ends: a waiter stays put."""

    def __init__(self) -> None:
        super().__init__()
        self.shut = False
        self.parked = 0  # sleepers waiting behind the shut gate
        self._never = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        if self.shut:
            self.parked += 1
            await self._never.wait()
        await super().sleep(seconds)


# -- independence ---------------------------------------------------------------------------


async def test_one_models_empty_bucket_never_holds_back_another() -> None:
    """60 a minute each: with sonnet's bucket empty and a sonnet request waiting on it, a
    haiku request goes at once; sonnet's next still waits its second."""
    t = _Gate()
    budget = _budget(t, requests_per_minute=60)
    for model in (SONNET, HAIKU):
        await _go(budget, model)  # each model's bucket exists, and starts empty
    t.now += 10.0  # both full: one request each
    await _go(budget, SONNET)  # sonnet's is empty now
    t.shut = True
    waiting = asyncio.create_task(budget.acquire(_body(SONNET)))
    for _ in range(100):
        if t.parked:  # the sonnet request naps in its model's line
            break
        await asyncio.sleep(0)
    assert t.parked == 1
    haiku = await asyncio.wait_for(budget.acquire(_body(HAIKU)), timeout=10)
    assert haiku.waited_s == 0.0
    assert not waiting.done()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    t.shut = False
    assert (await budget.acquire(_body(SONNET))).waited_s == pytest.approx(1.0)


async def test_a_429_pauses_its_model_only() -> None:
    """Sonnet's 429 with retry-after 5: sonnet's next request waits the 5 s, haiku's none."""
    t = FakeTime()
    budget = _budget(t, max_wait_s=60)
    await _go(budget, HAIKU)
    await _go(budget, SONNET, _429(retry_after=5))
    snapshot = budget.snapshot()
    assert (snapshot[f"{SONNET}.paused_s"], snapshot[f"{HAIKU}.paused_s"]) == (5.0, 0.0)
    assert snapshot["rate_limited"] == 1
    assert (await budget.acquire(_body(HAIKU))).waited_s == 0.0
    assert t.slept == []
    assert (await budget.acquire(_body(SONNET))).waited_s == pytest.approx(5.0)


async def test_limits_are_learned_per_model() -> None:
    """Sonnet's response says 600 a minute with 100 left: sonnet is paced and shows 600;
    haiku learned nothing, shows nothing and waits for nothing."""
    t = FakeTime()
    budget = _budget(t)
    await _go(budget, HAIKU)
    with capture_logs() as logs:
        await _go(budget, SONNET, _ok(_requests_headers(600, 100)))
    learned = [e for e in logs if e["event"] == "batchrun.limits.learned"]
    assert [(e["model"], e["requests"]) for e in learned] == [(SONNET, 600)]
    snapshot = budget.snapshot()
    assert snapshot[f"{SONNET}.requests_per_minute"] == 600
    assert snapshot[f"{HAIKU}.requests_per_minute"] is None
    assert (await budget.acquire(_body(HAIKU))).waited_s == 0.0
    assert (await budget.acquire(_body(SONNET))).waited_s == pytest.approx(0.1)


async def test_an_alias_or_dated_snapshot_is_its_models_budget() -> None:
    """A dated snapshot id takes from its model's bucket, and the run still has one model."""
    t = FakeTime()
    budget = _budget(t, requests_per_minute=60)
    await _go(budget, HAIKU)
    t.now += 10.0  # one request in the bucket
    await _go(budget, HAIKU)
    assert (await budget.acquire(_body(f"{HAIKU}-20261201"))).waited_s == pytest.approx(1.0)
    assert "requests_per_minute" in budget.snapshot()


# -- what is shown --------------------------------------------------------------------------


async def test_the_snapshot_keeps_its_keys_with_one_model_and_groups_them_with_two() -> None:
    """One model: the plain keys, as before; a second model: each model's limits and pause
    under its name, logged once as the effective limits."""
    t = FakeTime()
    budget = _budget(t, requests_per_minute=6000)
    plain = [
        "concurrency",
        "max_concurrency",
        "in_flight",
        "requests_per_minute",
        "input_tokens_per_minute",
        "output_tokens_per_minute",
        "paused_s",
        "rate_limited",
        "overloaded",
    ]
    assert list(budget.snapshot()) == plain  # before any request: the job's limits
    await _go(budget, SONNET)
    assert list(budget.snapshot()) == plain
    assert budget.snapshot()["requests_per_minute"] == 6000
    with capture_logs() as logs:
        await _go(budget, HAIKU)
    per_model = {
        f"{model}.{key}": value
        for model in (SONNET, HAIKU)
        for key, value in (
            ("requests_per_minute", 6000),
            ("input_tokens_per_minute", None),
            ("output_tokens_per_minute", None),
            ("paused_s", 0.0),
        )
    }
    snapshot = budget.snapshot()
    assert {k: snapshot[k] for k in per_model} == per_model
    assert list(snapshot) == [*plain[:3], *per_model, *plain[-2:]]
    effective = [e for e in logs if e["event"] == "batchrun.limits.effective"]
    assert len(effective) == 1
    assert effective[0][f"{HAIKU}.requests_per_minute"] == 6000


async def test_the_progress_line_shows_each_models_limits_and_pause() -> None:
    """Two models: the line names each with its limit, and the paused one with its pause."""
    t = FakeTime()
    budget = _budget(t, requests_per_minute=6000, max_wait_s=60)
    await _go(budget, SONNET)
    await _go(budget, HAIKU, _429(retry_after=3))
    line = Progress(total=1, stream=io.StringIO(), limits=budget.snapshot)._render().plain
    assert f"  {SONNET}: rpm 6,000  {HAIKU}: rpm 6,000, paused 3s (429)" in line
    one = _budget(t, requests_per_minute=6000)
    await _go(one, SONNET)
    line = Progress(total=1, stream=io.StringIO(), limits=one.snapshot)._render().plain
    assert line.endswith("concurrency 8/8  rpm 6,000")


# -- sharing --------------------------------------------------------------------------------


def _shared(tmp_path: Path, t: FakeTime, **limits: Any) -> RateBudget:
    config = LimitsConfig(state_dir=str(tmp_path), **limits)
    return make_budget(
        config,
        key_fingerprint=FINGERPRINT,
        cost=APIS["messages"],
        max_concurrency=8,
        clock=t,
        sleep=t.sleep,
        max_wait_s=60,
    )


async def test_two_budgets_on_one_host_share_a_model_and_not_another(tmp_path: Path) -> None:
    """Runs on one state_dir at 60 a minute: one's sonnet request empties the other's sonnet
    bucket and one's 429 pauses the others' sonnet, but haiku goes on untouched."""
    t = FakeTime()
    first, second, third = (_shared(tmp_path, t, requests_per_minute=60) for _ in range(3))
    for model in (SONNET, HAIKU):
        await _go(first, model)  # the files and buckets exist
    t.now += 10.0  # one request in each model's bucket
    await _go(first, SONNET)
    assert (await second.acquire(_body(HAIKU))).waited_s == 0.0
    assert (await second.acquire(_body(SONNET))).waited_s == pytest.approx(1.0)
    await _go(first, SONNET, _429(retry_after=300))
    await first.aclose()  # its store updates are written
    with pytest.raises(BudgetWaitError, match="paused"):
        await third.acquire(_body(SONNET))  # 300 s, more than the 60 s it may wait
    t.now += 1.0
    assert (await third.acquire(_body(HAIKU))).waited_s == 0.0
    files = [name for name in os.listdir(tmp_path) if name.endswith(".sqlite3")]
    assert len(files) == 2  # one per model
    await second.aclose()
    await third.aclose()


async def test_a_state_file_of_an_earlier_version_is_left_alone(tmp_path: Path) -> None:
    """The file earlier versions kept for the key and base URL, paused for a day, neither
    pauses nor breaks a run now: its first request waits its second, as on a new host."""
    t = FakeTime()
    old = SqliteStore(state_path(str(tmp_path), FINGERPRINT), clock=t)
    old.adjust([], pause_s=86_400)
    old.close()
    budget = _shared(tmp_path, t, requests_per_minute=60)
    assert (await budget.acquire(_body(SONNET))).waited_s == pytest.approx(1.0)
    await budget.aclose()


async def test_two_budgets_on_one_redis_share_a_model_and_not_another(redis_url: str) -> None:
    """Across hosts (one Redis): a 429 pause of sonnet holds the other budget's sonnet and
    leaves its haiku alone."""
    config = LimitsConfig(requests_per_minute=600_000, redis_url=redis_url)

    def budget() -> RateBudget:
        return make_budget(
            config,
            key_fingerprint=FINGERPRINT,
            cost=APIS["messages"],
            max_concurrency=8,
            max_wait_s=10,
        )

    first, second = budget(), budget()
    await _go(first, SONNET, _429(retry_after=60))
    await first.aclose()
    with pytest.raises(BudgetWaitError, match="paused"):
        await second.acquire(_body(SONNET))
    second.settle(await second.acquire(_body(HAIKU)), _ok())
    await second.aclose()


# -- the simulator --------------------------------------------------------------------------


def test_the_simulator_limits_each_model_separately() -> None:
    """One request a burst: sonnet's second is refused, haiku's first is not, and the headers
    and the refusal are each model's."""
    limiter = ServerLimiter(requests_per_minute=60, burst_s=1, clock=lambda: 0.0)
    assert limiter.admit(model=SONNET, input_tokens=1, max_tokens=1).ok
    refused = limiter.admit(model=SONNET, input_tokens=1, max_tokens=1)
    assert not refused.ok
    assert f"model: {SONNET}" in limiter.refusal_message(refused)
    assert limiter.headers(HAIKU)["anthropic-ratelimit-requests-remaining"] == "1"
    assert limiter.admit(model=HAIKU, input_tokens=1, max_tokens=1).ok
    assert not limiter.admit(model=f"{HAIKU}-20261201", input_tokens=1, max_tokens=1).ok
    assert limiter.headers(SONNET)["anthropic-ratelimit-requests-remaining"] == "0"


async def test_through_the_simulator_one_models_limit_never_slows_another(
    sim_server: Any,
) -> None:
    """A server allowing one request a second per model: after sonnet's answer says none is
    left, haiku's request goes at once and is answered, and each model shows its limit."""
    server = sim_server(requests_per_minute=60, rate_limit_burst_s=1)
    budget = make_budget(
        LimitsConfig(shared=False),
        key_fingerprint="f" * 64,
        cost=APIS["messages"],
        max_concurrency=4,
        max_wait_s=30,
    )
    waited: list[float] = []
    statuses: list[int | None] = []
    async with ApiClient(
        base_url=server.base_url,
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        transport=AiohttpTransport(),
    ) as client:
        for model in (SONNET, HAIKU):
            item = RequestItem("1", 0, ({"role": "user", "content": "question"},))
            body = APIS["messages"].body(item, {"model": model, "max_tokens": 50})
            body["stream"] = True
            reservation = await budget.acquire(body)
            waited.append(reservation.waited_s)
            attempt = Attempt()
            try:
                attempt = await stream_attempt(
                    client, APIS["messages"], body, total_s=10, clock=Clock()
                )
            finally:
                budget.settle(reservation, attempt)
            statuses.append(attempt.http_status)
    snapshot = budget.snapshot()
    await budget.aclose()
    assert statuses == [200, 200]
    assert waited[1] < 0.5  # sonnet's empty bucket (a second to refill) did not hold haiku
    assert snapshot[f"{SONNET}.requests_per_minute"] == 60
    assert snapshot[f"{HAIKU}.requests_per_minute"] == 60
