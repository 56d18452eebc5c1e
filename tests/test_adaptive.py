"""Adaptive concurrency: it backs off on the overload rate, not on a few early overloads.

Figures come from a simulated pool with an injected clock: attempts run through a real
:class:`RateBudget` (no rate limits, so only the concurrency gates them), a 529 returns fast and
a stream takes seconds, as against a real server. Nothing waits.
"""

from __future__ import annotations

import asyncio
import heapq
import random

from batchrun.apis import APIS
from batchrun.apis.anthropic import classify
from batchrun.models import Attempt, Completion
from batchrun.schedule.limits import MemoryStore, RateBudget, Reservation
from batchrun.schedule.limits.adaptive import MIN_WINDOW, AdaptiveConcurrency

BODY = {"model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "x" * 40}]}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def _ok() -> Attempt:
    done = Completion("hi", "end_turn", input_tokens=13, output_tokens=20)
    return Attempt(http_status=200, completion=done, output_tokens_seen=20)


def _overloaded() -> Attempt:
    return Attempt(
        http_status=529, error=classify("overloaded_error", "Overloaded", http_status=529)
    )


async def _simulate(share: float, *, concurrency: int = 64, seconds: float = 600.0) -> list[float]:
    """Keep a budget of ``concurrency`` slots busy for ``seconds`` of fake time; a ``share`` of
    attempts are 529s (back in 0.05-0.3 s), the rest stream for 2-6 s. Return the concurrency
    at every whole second."""
    clock = FakeClock()
    budget = RateBudget(
        {},
        lambda _m: MemoryStore(clock),
        cost=APIS["messages"],
        max_concurrency=concurrency,
        clock=clock,
    )
    rng = random.Random(14)
    flying: list[tuple[float, int, Reservation, bool]] = []
    start, n, seen = clock.now, 0, []
    while clock.now - start < seconds:
        while budget.snapshot()["in_flight"] < budget.snapshot()["concurrency"]:  # type: ignore[operator]
            reservation = await budget.acquire(BODY)  # a free slot: no wait
            overloaded = rng.random() < share
            took = rng.uniform(0.05, 0.3) if overloaded else rng.uniform(2.0, 6.0)
            heapq.heappush(flying, (clock.now + took, n, reservation, overloaded))
            n += 1
        ends, _, reservation, overloaded = heapq.heappop(flying)
        while start + len(seen) <= ends:
            seen.append(float(budget.snapshot()["concurrency"]))  # type: ignore[arg-type]
        clock.now = ends
        budget.settle(reservation, _overloaded() if overloaded else _ok())
    return seen


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


async def test_five_percent_of_overloads_keep_nine_tenths_of_the_concurrency() -> None:
    """At 64 with 5% of 529s: full concurrency through start-up, at least 90% on average."""
    seen = await _simulate(0.05)
    assert min(seen[:10]) == 64
    assert _mean(seen) >= 0.9 * 64


async def test_half_of_attempts_overloaded_still_back_off() -> None:
    """At 64 with 50% of 529s: halved within seconds, below a quarter after the first minute."""
    seen = await _simulate(0.5)
    assert min(seen[:5]) <= 32
    assert _mean(seen[60:]) <= 16


def test_three_early_overloads_do_not_cut() -> None:
    """Three 529s before any stream finishes are 3 of a round of 64, not a reason to halve."""
    slots = AdaptiveConcurrency(64)
    assert not any(slots.overloaded(0) for _ in range(3))
    assert slots.slots == 64


def test_a_quarter_of_a_window_overloaded_halves_once_per_epoch() -> None:
    """Of 16 attempts at 16, the 4th overload cuts to 8; those begun before the cut do not."""
    slots = AdaptiveConcurrency(16)
    assert slots.window == MIN_WINDOW == 16
    for _ in range(12):
        slots.succeeded(0)
    assert [slots.overloaded(0) for _ in range(4)] == [False, False, False, True]
    assert slots.slots == 8
    assert not any(slots.overloaded(0) for _ in range(10))  # the old epoch's attempts
    assert slots.slots == 8


def test_overloads_below_a_quarter_of_the_window_never_cut() -> None:
    """Three overloads in every 16 attempts (19%), for a long time: full concurrency."""
    slots = AdaptiveConcurrency(16)
    for _ in range(100):
        for _ in range(3):
            slots.overloaded(slots.epoch)
        for _ in range(13):
            slots.succeeded(slots.epoch)
    assert slots.slots == 16


def test_successes_grow_concurrency_back_by_one_a_round() -> None:
    """From 4, about four successes add a slot; never past the maximum, never below 1."""
    slots = AdaptiveConcurrency(8)
    slots.limit = 4.0
    grown = [slots.succeeded() for _ in range(5)]
    assert grown == [False, False, False, False, True]
    assert slots.slots == 5
    for _ in range(200):
        slots.succeeded()
    assert slots.slots == 8
    for _ in range(100):
        slots.overloaded(slots.epoch)
    assert slots.slots == 1
