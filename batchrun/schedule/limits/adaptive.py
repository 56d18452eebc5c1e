"""Limits: concurrency that adapts to overload, additive increase / multiplicative decrease.

Slots are handed out in FIFO order up to ``limit``. A run of :data:`OVERLOAD_STREAK` overloaded
attempts (HTTP 529 or an ``overloaded_error`` event) with no success between them cuts the limit
by :data:`DECREASE` (never below 1); overloads of attempts that began before the last cut are
the old load's and do not cut again. Each success adds ``1 / limit`` back, so the limit grows by
one per round of successful streams, up to the run's ``concurrency``. Scattered overloads under
a healthy server never line up into a streak; a real overload window does, within a few attempts.

Per process: the server's overload is the same for every client, so sharing it buys nothing.
This module must not know about HTTP, buckets or the clock.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["DECREASE", "OVERLOAD_STREAK", "AdaptiveConcurrency"]

DECREASE = 0.5
OVERLOAD_STREAK = 3


class AdaptiveConcurrency:
    """An asyncio semaphore whose size is an AIMD-controlled ``limit`` in [1, maximum]."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.limit = float(maximum)
        self.in_use = 0
        self.epoch = 0  # bumped by every cut; a slot remembers the epoch it was taken in
        self._streak = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def slots(self) -> int:
        return max(1, int(self.limit))

    async def acquire(self) -> int:
        """Wait for a slot; return the epoch it was taken in."""
        if self.in_use < self.slots and not self._waiters:
            self.in_use += 1
            return self.epoch
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as we were cancelled: give it back
            else:
                self._waiters.remove(waiter)
            raise
        return self.epoch

    def release(self) -> None:
        self.in_use -= 1
        self._wake()

    def overloaded(self, epoch: int) -> bool:
        """An attempt taken in ``epoch`` was overloaded; return whether the limit was cut."""
        if epoch != self.epoch:
            return False
        self._streak += 1
        if self._streak < OVERLOAD_STREAK:
            return False
        self._streak = 0
        self.epoch += 1
        old = self.slots
        self.limit = max(1.0, self.limit * DECREASE)
        return self.slots != old

    def succeeded(self) -> bool:
        """An attempt streamed to its end; return whether a slot was added."""
        self._streak = 0
        old = self.slots
        self.limit = min(float(self.maximum), self.limit + 1.0 / self.limit)
        self._wake()
        return self.slots != old

    def _wake(self) -> None:
        while self._waiters and self.in_use < self.slots:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_use += 1
                waiter.set_result(None)
