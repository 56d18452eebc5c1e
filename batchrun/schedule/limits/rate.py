"""Limits: the rate-limited budget. Buckets learned from the server, a 429 pause, AIMD.

Effective limit of each bucket = the stricter of the job's setting and the ``limit`` header the
server last sent; a bucket with neither does not exist, so a job without limits waits for
nothing until a response teaches it one. What the budget *reports* (``snapshot``: the progress
line, the ``batchrun.limits.effective`` log) is narrower: a bucket the job configures, or one
whose header-learned limit was seen to bind (a response said less than half of it was left,
a 429's headers included). A server advertising limits the run never approaches (the
simulator's 1e9 tokens a minute, an organisation's 4,000 requests a minute for a run of 16
streams) paces nothing, so it shows nothing; the advertised values are logged at debug level
(``batchrun.limits.learned``). ``acquire`` takes a concurrency slot, refuses at once a
request that needs more than a bucket's whole minute, then (one request at a time, in arrival
order) takes every bucket at once from the store; it naps while short, waking early when a
settled attempt gives tokens back. ``settle`` gives back what an attempt did not use (all of it
when the server refused the request or never answered), lowers a bucket to what the server says
is left, pauses the whole pool (every process that shares the store) on a 429 until
``retry-after``, and feeds overloads and successes to AIMD.

This module must not speak HTTP: an exact token count comes through an injected function.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import structlog

from batchrun.clock import Sleep
from batchrun.models import Attempt
from batchrun.schedule.limits.adaptive import AdaptiveConcurrency
from batchrun.schedule.limits.bucket import Adjust, BucketSpec, Want
from batchrun.schedule.limits.budget import BudgetWaitError, Reservation, Snapshot
from batchrun.schedule.limits.fit import refuse_if_never_fits, unused
from batchrun.schedule.limits.headers import ServerView, read_ratelimit_headers, read_retry_after
from batchrun.schedule.limits.store import PAUSED, BudgetStore, MemoryStore, StoreUnavailable

__all__ = ["DEFAULT_PAUSE_S", "CountTokens", "RateBudget", "RequestCost"]

log = structlog.get_logger()

T = TypeVar("T")
CountTokens = Callable[[dict[str, Any]], Awaitable[int]]


class RequestCost(Protocol):
    """What a request body will cost: the API's own estimate (an :class:`~batchrun.apis.Api`)."""

    def estimate_input_tokens(self, body: Mapping[str, Any]) -> int: ...

    def output_reservation(self, body: Mapping[str, Any]) -> int: ...

    def count_tokens_body(self, body: Mapping[str, Any]) -> dict[str, Any] | None: ...


DEFAULT_PAUSE_S = 1.0  # a 429 without retry-after still pauses the pool this long
_NAP_S = 0.5  # longest nap while a bucket is short: other processes' give-backs wake no one
_COUNT_CACHE = 4096
_LIMIT_KEYS = {
    "requests": "requests_per_minute",
    "input_tokens": "input_tokens_per_minute",
    "output_tokens": "output_tokens_per_minute",
}


class RateBudget:
    """A :class:`~batchrun.schedule.limits.budget.Budget` over a :class:`BudgetStore`."""

    def __init__(
        self,
        configured: Mapping[str, int | None],
        store: BudgetStore,
        *,
        cost: RequestCost,
        max_concurrency: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        max_wait_s: float | None = None,
        count_tokens: CountTokens | None = None,
    ) -> None:
        self._configured = {name: configured.get(name) for name in _LIMIT_KEYS}
        self._learned: dict[str, int] = {}
        self._bound: set[str] = set()  # learned limits seen to bind: reported
        self._reported: dict[str, int | None] = dict.fromkeys(_LIMIT_KEYS.values())
        self._specs: dict[str, BucketSpec] = {}
        self._store = store
        self._clock = clock
        self._sleep = sleep
        self._max_wait_s = max_wait_s
        self._cost = cost
        self._count_tokens = count_tokens
        self._counts: dict[str, int] = {}
        self._slots = AdaptiveConcurrency(max_concurrency)
        self._line = asyncio.Lock()  # one request at a time asks the store, in arrival order
        self._gave_back = asyncio.Event()
        self._paused_until = float("-inf")
        self._pending: set[asyncio.Task[None]] = set()
        self._rate_limited = 0
        self._overloaded = 0
        self._refresh_specs()

    # -- acquire ---------------------------------------------------------------------------

    async def acquire(self, body: dict[str, Any], *, deadline: float | None = None) -> Reservation:
        started = self._clock()
        epoch = await self._slots.acquire()
        try:
            wants = await self._wants(body)
            refuse_if_never_fits(body, wants)
            if wants:
                async with self._line:
                    await self._wait(wants, deadline)
            else:
                await self._wait((), deadline)
        except BaseException:
            self._slots.release()
            raise
        return Reservation(wants, epoch, max(0.0, self._clock() - started), slot=True)

    async def _wants(self, body: dict[str, Any]) -> tuple[Want, ...]:
        wants = []
        for name, spec in self._specs.items():
            if name == "requests":
                wants.append(Want(spec, 1))
            elif name == "input_tokens":
                wants.append(Want(spec, await self._input_tokens(body)))
            else:
                wants.append(Want(spec, self._cost.output_reservation(body)))
        return tuple(wants)

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
                f"the pool is paused for another {wait:.1f} s after a 429 (retry-after), "
                f"longer than the {self._max_wait_s:g} s allowed (retry.max_backoff_s)",
                retry_after=wait,
            )
        if deadline is not None and now + wait > deadline:
            raise BudgetWaitError(
                "rate_limit_wait",
                f"waiting {wait:.1f} s for the {reason} budget would pass the run's deadline",
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

    async def _input_tokens(self, body: dict[str, Any]) -> int:
        counted = self._cost.count_tokens_body(body) if self._count_tokens is not None else None
        if counted is None or self._count_tokens is None:
            return self._cost.estimate_input_tokens(body)
        canonical = json.dumps(counted, sort_keys=True, ensure_ascii=False).encode()
        key = hashlib.sha256(canonical).hexdigest()
        if key not in self._counts:
            try:
                self._counts[key] = await self._count_tokens(counted)
            except Exception as exc:  # a failed count must never fail the request
                log.warning("batchrun.limits.count_tokens_failed", error=str(exc)[:200])
                return self._cost.estimate_input_tokens(body)
            if len(self._counts) > _COUNT_CACHE:
                del self._counts[next(iter(self._counts))]
        return self._counts[key]

    # -- settle ----------------------------------------------------------------------------

    def settle(self, reservation: Reservation, attempt: Attempt) -> None:
        if reservation.settled:
            return
        reservation.settled = True
        if reservation.slot:
            self._slots.release()
        views = read_ratelimit_headers(attempt.ratelimit_headers)
        if views:
            self._learn(views)
        pause_s = self._pause_s(attempt)
        changes = self._give_back(reservation, attempt) + self._tighten(views, attempt, pause_s)
        self._on_outcome(reservation, attempt, pause_s)
        if (changes or pause_s > 0) and self._specs:
            if self._store.blocking:
                task = asyncio.get_running_loop().create_task(self._adjust(changes, pause_s))
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
            else:
                self._store.adjust(changes, pause_s=pause_s)
                self._gave_back.set()

    def _give_back(self, reservation: Reservation, attempt: Attempt) -> list[Adjust]:
        if unused(attempt):
            # Refused or never answered, the request cost the server nothing: keeping what it
            # took would hold back every request behind it (a 413 of millions of tokens for
            # half an hour). A 429's own pause empties the buckets after this.
            return [
                Adjust(self._specs.get(w.spec.name, w.spec), give=w.amount)
                for w in reservation.wants
                if w.amount
            ]
        done = attempt.completion if attempt.error is None else None
        changes = []
        for want in reservation.wants:
            spec = self._specs.get(want.spec.name, want.spec)
            if spec.name == "input_tokens" and done is not None and done.input_tokens is not None:
                changes.append(Adjust(spec, give=want.amount - done.input_tokens))
            elif spec.name == "output_tokens":
                used = done.output_tokens if done is not None else None
                if used is None:
                    used = attempt.output_tokens_seen or 0
                changes.append(Adjust(spec, give=max(0.0, want.amount - used)))
        return [c for c in changes if c.give != 0]

    def _tighten(self, views: Mapping[str, Any], attempt: Attempt, pause_s: float) -> list[Adjust]:
        """Lower each bucket to what the server said was left, plus what has refilled since
        the headers came (at least the stream's length after its first event). After a 429,
        lower every bucket so that it is empty when the pause ends: no burst on resuming."""
        if pause_s > 0:
            return [Adjust(spec, at_most=-spec.rate * pause_s) for spec in self._specs.values()]
        age = max(0.0, attempt.e2e_s - (attempt.ttft_s or attempt.e2e_s))
        changes = []
        for name, view in views.items():
            spec = self._specs.get(name)
            if spec is not None and view.remaining is not None:
                left = view.remaining + spec.rate * age
                if left < spec.capacity:
                    changes.append(Adjust(spec, at_most=left))
        return changes

    def _pause_s(self, attempt: Attempt) -> float:
        """How long a 429 pauses the pool (0.0 for any other outcome)."""
        error = attempt.error
        if attempt.http_status != 429 and (error is None or error.http_status != 429):
            return 0.0
        retry_after = error.retry_after if error is not None else None
        if retry_after is None:
            retry_after = read_retry_after(attempt.ratelimit_headers)
        return DEFAULT_PAUSE_S if retry_after is None else retry_after

    def _on_outcome(self, reservation: Reservation, attempt: Attempt, pause_s: float) -> None:
        """Count the outcome, pause on a 429 and feed AIMD."""
        error = attempt.error
        if pause_s > 0:
            self._rate_limited += 1
            self._paused_until = max(self._paused_until, self._clock() + pause_s)
            log.warning("batchrun.limits.paused", pause_s=round(pause_s, 3), **self.snapshot())
            return
        if error is not None and (
            error.error_type == "overloaded_error" or attempt.http_status == 529
        ):
            self._overloaded += 1
            if reservation.slot and self._slots.overloaded(reservation.epoch):
                log.warning("batchrun.limits.concurrency_cut", **self.snapshot())
        elif (
            error is None
            and attempt.completion is not None
            and reservation.slot
            and self._slots.succeeded(reservation.epoch)
        ):
            log.info("batchrun.limits.concurrency_grown", **self.snapshot())

    async def _adjust(self, changes: list[Adjust], pause_s: float) -> None:
        await self._call(lambda s: s.adjust(changes, pause_s=pause_s))
        self._gave_back.set()

    # -- the rest --------------------------------------------------------------------------

    def _learn(self, views: Mapping[str, ServerView]) -> None:
        """Take the limits a response's headers advertise; note those seen to bind."""
        before = dict(self._learned)
        for name, view in views.items():
            if view.limit is not None:
                self._learned[name] = view.limit
            limit = self._learned.get(name)
            if limit is not None and view.remaining is not None and 2 * view.remaining < limit:
                self._bound.add(name)
        if self._learned != before:
            log.debug("batchrun.limits.learned", **self._learned)
        self._refresh_specs()

    def _refresh_specs(self) -> None:
        specs = {}
        for name, configured in self._configured.items():
            learned = self._learned.get(name)
            limits = [v for v in (configured, learned) if v is not None]
            if limits:
                specs[name] = BucketSpec.per_minute(name, min(limits))
        self._specs = specs
        reported = self._limits()
        if reported != self._reported:
            self._reported = reported
            log.info("batchrun.limits.effective", **self.snapshot())

    def _limits(self) -> dict[str, int | None]:
        """The per-minute limits the budget reports: configured, or learned and seen to bind."""
        out: dict[str, int | None] = {}
        for name, key in _LIMIT_KEYS.items():
            spec = self._specs.get(name)
            shown = self._configured[name] is not None or name in self._bound
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
                error=str(exc),
                note="budgets not shared",
            )
            broken, self._store = self._store, MemoryStore(self._clock)
            with contextlib.suppress(StoreUnavailable):
                broken.close()
            return op(self._store)

    def snapshot(self) -> Snapshot:
        out: Snapshot = {
            "concurrency": self._slots.slots,
            "max_concurrency": self._slots.maximum,
            "in_flight": self._slots.in_use,
        }
        out.update(self._limits())
        out["paused_s"] = round(max(0.0, self._paused_until - self._clock()), 3)
        out["rate_limited"] = self._rate_limited
        out["overloaded"] = self._overloaded
        return out

    async def aclose(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self._store.blocking:
            await asyncio.to_thread(self._store.close)
        else:
            self._store.close()
