"""Limits: one model's budget. Its buckets (configured and learned), its store, its 429 pause.

The API limits each model separately: requests, input tokens and output tokens per minute, and
a 429 says that one model's limit was passed, so every model of a run has one of these, and one
model's requests never wait for another's buckets, lessons or pause. What stays run-wide (the
concurrency slots and AIMD, the count of 429s and overloads, the exact-count cache) is the
:class:`~batchrun.schedule.limits.rate.RateBudget`'s, which routes each body here by its
``"model"``.

Effective limit of each bucket = the stricter of the job's setting and the ``limit`` header the
server last sent for this model; a bucket with neither does not exist. What it *reports* is
narrower: a bucket the job configures, or one whose learned limit was seen to bind (a response
said less than half of it was left). Requests of one model ask the store one at a time, in
arrival order, napping while short and waking early when a settled attempt gives tokens back.

This module must not speak HTTP, nor know about slots, counters or other models.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import structlog

from batchrun.clock import Sleep
from batchrun.models import Attempt
from batchrun.schedule.limits.bucket import Adjust, BucketSpec, Want
from batchrun.schedule.limits.budget import BudgetWaitError
from batchrun.schedule.limits.fit import unused
from batchrun.schedule.limits.headers import ServerView
from batchrun.schedule.limits.store import PAUSED, BudgetStore, MemoryStore, StoreUnavailable

__all__ = ["LIMIT_KEYS", "ModelBudget"]

log = structlog.get_logger()

T = TypeVar("T")
_NAP_S = 0.5  # longest nap while a bucket is short: other processes' give-backs wake no one
LIMIT_KEYS = {
    "requests": "requests_per_minute",
    "input_tokens": "input_tokens_per_minute",
    "output_tokens": "output_tokens_per_minute",
}


class ModelBudget:
    """The buckets, store and pause of one model (``name``: as the run's bodies name it)."""

    def __init__(
        self,
        name: str,
        configured: Mapping[str, int | None],
        store: BudgetStore,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        max_wait_s: float | None = None,
    ) -> None:
        self.name = name
        self._configured = configured
        self._learned: dict[str, int] = {}
        self._bound: set[str] = set()  # learned limits seen to bind: reported
        self.specs: dict[str, BucketSpec] = {}
        self.reported: dict[str, int | None] = {}
        self._store = store
        self._clock = clock
        self._sleep = sleep
        self._max_wait_s = max_wait_s
        self._line = asyncio.Lock()  # one request at a time asks the store, in arrival order
        self._gave_back = asyncio.Event()
        self._paused_until = float("-inf")
        self._pending: set[asyncio.Task[None]] = set()
        self._refresh_specs()

    # -- before an attempt -----------------------------------------------------------------

    async def wait(self, wants: Sequence[Want], deadline: float | None) -> None:
        """Return once ``wants`` are taken and this model is not paused."""
        if not wants:
            await self._wait(wants, deadline)
            return
        async with self._line:
            await self._wait(wants, deadline)

    async def _wait(self, wants: Sequence[Want], deadline: float | None) -> None:
        while True:
            now = self._clock()
            reason: str | None
            if self._paused_until > now:
                wait, reason = self._paused_until - now, PAUSED
            elif wants:
                self._gave_back.clear()
                wait, reason = await self._call(lambda s: s.take(wants))
            else:
                return
            if reason is None:
                return
            self._check_bound(wait, reason, now, deadline)
            if reason == PAUSED:
                await self._sleep(wait)
            else:
                await self._nap(min(wait, _NAP_S))

    def _check_bound(self, wait: float, reason: str, now: float, deadline: float | None) -> None:
        if reason == PAUSED and self._max_wait_s is not None and wait > self._max_wait_s:
            raise BudgetWaitError(
                "rate_limit_wait",
                f"{self.name} is paused for another {wait:.1f} s after a 429 (retry-after), "
                f"longer than the {self._max_wait_s:g} s allowed (retry.max_backoff_s)",
                retry_after=wait,
            )
        if deadline is not None and now + wait > deadline:
            raise BudgetWaitError(
                "rate_limit_wait",
                f"waiting {wait:.1f} s for the {reason} budget of {self.name} would pass the "
                "run's deadline",
                retry_after=wait,
            )

    async def _nap(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if a settled attempt gives tokens back meanwhile."""
        sleeper = asyncio.ensure_future(self._sleep(seconds))
        waker = asyncio.ensure_future(self._gave_back.wait())
        try:
            await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, waker):
                task.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)

    # -- after an attempt ------------------------------------------------------------------

    def give_back(self, wants: Sequence[Want], attempt: Attempt) -> list[Adjust]:
        """What the attempt did not use of ``wants``: output it did not write, the input
        estimate's error, or everything when the server did no work for it."""
        if unused(attempt):
            # Refused or never answered, the request cost the server nothing: keeping what it
            # took would hold back every request behind it (a 413 of millions of tokens for
            # half an hour). A 429's own pause empties the buckets after this.
            return [
                Adjust(self.specs.get(w.spec.name, w.spec), give=w.amount)
                for w in wants
                if w.amount
            ]
        done = attempt.completion if attempt.error is None else None
        changes = []
        for want in wants:
            spec = self.specs.get(want.spec.name, want.spec)
            if spec.name == "input_tokens" and done is not None and done.input_tokens is not None:
                changes.append(Adjust(spec, give=want.amount - done.input_tokens))
            elif spec.name == "output_tokens":
                used = done.output_tokens if done is not None else None
                if used is None:
                    used = attempt.output_tokens_seen or 0
                changes.append(Adjust(spec, give=max(0.0, want.amount - used)))
        return [c for c in changes if c.give != 0]

    def tighten(
        self, views: Mapping[str, ServerView], attempt: Attempt, pause_s: float
    ) -> list[Adjust]:
        """Lower each bucket to what the server said was left, plus what has refilled since
        the headers came (at least the stream's length after its first event). After a 429,
        lower every bucket so that it is empty when the pause ends: no burst on resuming."""
        if pause_s > 0:
            return [Adjust(spec, at_most=-spec.rate * pause_s) for spec in self.specs.values()]
        age = max(0.0, attempt.e2e_s - (attempt.ttft_s or attempt.e2e_s))
        changes = []
        for name, view in views.items():
            spec = self.specs.get(name)
            if spec is not None and view.remaining is not None:
                left = view.remaining + spec.rate * age
                if left < spec.capacity:
                    changes.append(Adjust(spec, at_most=left))
        return changes

    def pause(self, pause_s: float) -> None:
        """A 429 of this model: nothing of it starts for ``pause_s``."""
        self._paused_until = max(self._paused_until, self._clock() + pause_s)

    def paused_s(self) -> float:
        return round(max(0.0, self._paused_until - self._clock()), 3)

    def adjust(self, changes: list[Adjust], pause_s: float) -> None:
        """Apply ``changes`` and a pause to the store (in the background when it blocks)."""
        if not (changes or pause_s > 0) or not self.specs:
            return
        if self._store.blocking:
            task = asyncio.get_running_loop().create_task(self._adjust(changes, pause_s))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        else:
            self._store.adjust(changes, pause_s=pause_s)
            self._gave_back.set()

    async def _adjust(self, changes: list[Adjust], pause_s: float) -> None:
        await self._call(lambda s: s.adjust(changes, pause_s=pause_s))
        self._gave_back.set()

    def learn(self, views: Mapping[str, ServerView]) -> bool:
        """Take the limits a response's headers advertise; note those seen to bind. Return
        whether what the model reports changed."""
        before = dict(self._learned)
        for name, view in views.items():
            if view.limit is not None:
                self._learned[name] = view.limit
            limit = self._learned.get(name)
            if limit is not None and view.remaining is not None and 2 * view.remaining < limit:
                self._bound.add(name)
        if self._learned != before:
            log.debug("batchrun.limits.learned", model=self.name, **self._learned)
        return self._refresh_specs()

    # -- the rest --------------------------------------------------------------------------

    def _refresh_specs(self) -> bool:
        specs = {}
        for name, configured in self._configured.items():
            learned = self._learned.get(name)
            limits = [v for v in (configured, learned) if v is not None]
            if limits:
                specs[name] = BucketSpec.per_minute(name, min(limits))
        self.specs = specs
        reported = self._limits()
        changed = reported != self.reported
        self.reported = reported
        return changed

    def _limits(self) -> dict[str, int | None]:
        """The per-minute limits reported: configured, or learned and seen to bind."""
        out: dict[str, int | None] = {}
        for name, key in LIMIT_KEYS.items():
            spec = self.specs.get(name)
            shown = self._configured.get(name) is not None or name in self._bound
            out[key] = round(spec.rate * 60) if spec is not None and shown else None
        return out

    async def _call(self, op: Callable[[BudgetStore], T]) -> T:
        """Run a store operation, off the event loop when the store blocks; fall back to an
        in-process store when the shared one cannot be used."""
        if not self._store.blocking:
            return op(self._store)
        try:
            return await asyncio.to_thread(op, self._store)
        except StoreUnavailable as exc:
            log.warning(
                "batchrun.limits.shared_unavailable",
                model=self.name,
                error=str(exc),
                note="budgets not shared",
            )
            broken, self._store = self._store, MemoryStore(self._clock)
            with contextlib.suppress(StoreUnavailable):
                broken.close()
            return op(self._store)

    async def aclose(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._store.blocking:
            await asyncio.to_thread(self._store.close)
        else:
            self._store.close()
