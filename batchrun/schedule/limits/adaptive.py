"""Limits: concurrency that adapts to the overload rate: additive increase, multiplicative cut.

Slots are handed out in FIFO order up to ``limit``. The limit is cut by :data:`DECREASE` (never
below 1) when the overload *rate* is high: when at least :data:`OVERLOAD_SHARE` of the last
``window`` answered attempts (overloads, HTTP 529 or an ``overloaded_error`` event, and
successes) were overloaded, the window being one round of slots (at least :data:`MIN_WINDOW`
attempts). A cut starts a new epoch and an empty window: outcomes of attempts that began before
it are the old load's and are not counted. Each success adds ``1 / limit`` back, so the limit
grows by one per round of successful streams, up to the run's ``concurrency``.

Why a share, not a streak: at start-up the fast 529s arrive before any stream finishes, so a
few scattered overloads look like a streak; as a share of a round they are what they are. 5% of
overloads keep the limit near the maximum (a quarter of a round of 16 or more attempts is
almost never reached); 50% cut it about once a round, as AIMD should.

Per process: the server's overload is the same for every client, so sharing it buys nothing.
This module must not know about HTTP, buckets or the clock.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["DECREASE", "MIN_WINDOW", "OVERLOAD_SHARE", "AdaptiveConcurrency"]

DECREASE = 0.5
OVERLOAD_SHARE = 0.25  # of the window's attempts overloaded: cut
MIN_WINDOW = 16  # attempts: fewer cannot tell 5% of overloads from 25%


class AdaptiveConcurrency:
    """An asyncio semaphore whose size is an AIMD-controlled ``limit`` in [1, maximum]."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.limit = float(maximum)
        self.in_use = 0
        self.epoch = 0  # bumped by every cut; a slot remembers the epoch it was taken in
        self._recent: deque[bool] = deque()  # this epoch's outcomes, newest last: overloaded?
        self._overloads = 0  # how many of ``_recent`` were overloaded
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def slots(self) -> int:
        return max(1, int(self.limit))

    @property
    def window(self) -> int:
        """How many recent attempts the overload share is taken over: one round of slots."""
        return max(MIN_WINDOW, self.slots)

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
        self._observe(True)
        if self._overloads < OVERLOAD_SHARE * self.window:
            return False
        self._recent.clear()
        self._overloads = 0
        self.epoch += 1
        old = self.slots
        self.limit = max(1.0, self.limit * DECREASE)
        return self.slots != old

    def succeeded(self, epoch: int | None = None) -> bool:
        """An attempt (taken in ``epoch``) streamed to its end; return whether a slot was added."""
        if epoch == self.epoch:
            self._observe(False)
        old = self.slots
        self.limit = min(float(self.maximum), self.limit + 1.0 / self.limit)
        self._wake()
        return self.slots != old

    def _observe(self, overloaded: bool) -> None:
        self._recent.append(overloaded)
        self._overloads += overloaded
        while len(self._recent) > self.window:
            self._overloads -= self._recent.popleft()

    def _wake(self) -> None:
        while self._waiters and self.in_use < self.slots:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.in_use += 1
                waiter.set_result(None)
