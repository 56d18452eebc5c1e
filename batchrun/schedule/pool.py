"""Stage 2: a bounded pool of workers with backpressure from input to output.

``run_pool`` pulls items from an async iterator only as fast as ``concurrency`` workers take
them (through a queue of bounded size), so a million-row input never sits in memory. It runs any
``async (item, queued_at) -> None`` and knows nothing of HTTP, budgets or files. A worker that
raises ends the pool: the other workers are cancelled and the error propagates (per-request
failures are the worker's to turn into data; only run-level errors should escape).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["run_pool"]

T = TypeVar("T")


class _Queued(Generic[T]):
    __slots__ = ("item", "queued_at")

    def __init__(self, item: T, queued_at: float) -> None:
        self.item = item
        self.queued_at = queued_at


async def run_pool(
    items: AsyncIterable[T],
    worker: Callable[[T, float], Awaitable[None]],
    *,
    concurrency: int,
    stop: asyncio.Event | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> None:
    """Feed ``items`` to ``concurrency`` workers; return when every taken item is done.

    ``queued_at`` is the clock reading when the item entered the queue, so a worker can tell how
    long it waited for a slot. Setting ``stop`` ends dispatching: items not yet taken by a worker
    are left unprocessed, items in hand are finished.
    """
    queue: asyncio.Queue[_Queued[T] | None] = asyncio.Queue(maxsize=concurrency)
    stop = stop or asyncio.Event()

    async def feed() -> None:
        async for item in items:
            if stop.is_set():
                break
            await queue.put(_Queued(item, clock()))
        for _ in range(concurrency):
            await queue.put(None)  # one end marker per worker

    async def work() -> None:
        while (queued := await queue.get()) is not None:
            if not stop.is_set():  # once stopped, drain without working so the feeder can end
                await worker(queued.item, queued.queued_at)

    async with asyncio.TaskGroup() as group:
        group.create_task(feed())
        for _ in range(concurrency):
            group.create_task(work())
