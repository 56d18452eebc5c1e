"""The worker pool: concurrency bound, backpressure, stop, and errors."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from batchrun.schedule.pool import run_pool


async def _numbers(n: int, pulled: list[int]) -> AsyncIterator[int]:
    for i in range(n):
        pulled.append(i)
        yield i


async def test_every_item_is_worked_once() -> None:
    """Each item reaches exactly one worker call."""
    seen: list[int] = []

    async def worker(item: int, queued_at: float) -> None:
        await asyncio.sleep(0)
        seen.append(item)

    await run_pool(_numbers(100, []), worker, concurrency=7)
    assert sorted(seen) == list(range(100))


async def test_concurrency_is_never_exceeded() -> None:
    """No more than `concurrency` workers run at once, and the pool does reach it."""
    running = peak = 0

    async def worker(item: int, queued_at: float) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.001)
        running -= 1

    await run_pool(_numbers(50, []), worker, concurrency=5)
    assert peak == 5


async def test_input_is_pulled_only_as_fast_as_workers_take_it() -> None:
    """Backpressure: with blocked workers, only a bounded number of items is read ahead."""
    pulled: list[int] = []
    release = asyncio.Event()

    async def worker(item: int, queued_at: float) -> None:
        await release.wait()

    task = asyncio.create_task(run_pool(_numbers(10_000, pulled), worker, concurrency=4))
    await asyncio.sleep(0.05)
    assert len(pulled) <= 4 + 4 + 1  # in hand + queued + the one waiting to be queued
    release.set()
    await task
    assert len(pulled) == 10_000


async def test_stop_ends_dispatch_but_finishes_items_in_hand() -> None:
    """After stop is set no new item starts; items already started complete."""
    stop = asyncio.Event()
    started: list[int] = []
    finished: list[int] = []

    async def worker(item: int, queued_at: float) -> None:
        started.append(item)
        if item == 3:
            stop.set()
        await asyncio.sleep(0.01)
        finished.append(item)

    await run_pool(_numbers(1000, []), worker, concurrency=2, stop=stop)
    assert sorted(started) == sorted(finished)
    assert len(started) < 10


async def test_queued_at_comes_from_the_clock() -> None:
    """Workers receive the clock reading taken when their item was queued."""
    ticks = iter(range(1000))
    got: list[float] = []

    async def worker(item: int, queued_at: float) -> None:
        got.append(queued_at)

    await run_pool(_numbers(3, []), worker, concurrency=1, clock=lambda: float(next(ticks)))
    assert got == [0.0, 1.0, 2.0]


async def test_a_worker_error_ends_the_pool() -> None:
    """An exception escaping a worker cancels the others and propagates."""

    async def worker(item: int, queued_at: float) -> None:
        if item == 5:
            raise ValueError("boom")
        await asyncio.sleep(0.001)

    with pytest.raises(ExceptionGroup) as info:
        await run_pool(_numbers(100, []), worker, concurrency=3)
    assert info.group_contains(ValueError, match="boom")
