"""Limits: the rate-limited budget. Run-wide slots and AIMD; buckets and 429 pauses per model.

The API limits each model separately (Anthropic's rate-limit docs: limits apply per model, so
different models can be used up to their own limits at once), so the budget keeps one
:class:`~batchrun.schedule.limits.model.ModelBudget` per model a run sends, found by the body's
``"model"`` with a dict lookup and made on the model's first request: the job's configured
limits apply to each model, limits learned from a response's headers and a 429's pause belong to
that response's model, and the shared store of each is keyed by model too (``make_budget``).
Concurrency stays run-wide: ``acquire`` takes a concurrency slot (AIMD on the overload rate),
refuses at once a request that needs more than a bucket's whole minute, then waits for its
model's buckets. ``settle`` gives back what an attempt did not use, lowers its model's buckets to
what the server says is left, pauses its model (in every process that shares the store) on a 429
until ``retry-after``, and feeds overloads and successes to AIMD.

What the budget *reports* (``snapshot``: the progress line, the ``batchrun.limits.effective``
log) is each model's configured limits and learned ones seen to bind; with one model (or none
yet) under the plain keys (``requests_per_minute``, ``paused_s``, ...), with several under
``<model>.requests_per_minute`` and so on, one group per model.

This module must not speak HTTP: an exact token count comes through an injected function.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import structlog

from batchrun.clock import Sleep
from batchrun.job.catalogue import lookup
from batchrun.models import Attempt
from batchrun.schedule.limits.adaptive import AdaptiveConcurrency
from batchrun.schedule.limits.bucket import BucketSpec, Want
from batchrun.schedule.limits.budget import Reservation, Snapshot
from batchrun.schedule.limits.fit import refuse_if_never_fits
from batchrun.schedule.limits.headers import read_ratelimit_headers, read_retry_after
from batchrun.schedule.limits.model import LIMIT_KEYS, ModelBudget
from batchrun.schedule.limits.store import BudgetStore

__all__ = ["DEFAULT_PAUSE_S", "CountTokens", "RateBudget", "RequestCost", "StoreFor"]

log = structlog.get_logger()

CountTokens = Callable[[dict[str, Any]], Awaitable[int]]
StoreFor = Callable[[str], BudgetStore]  # a model's id -> the store of its buckets and pause


class RequestCost(Protocol):
    """What a request body will cost: the API's own estimate (an :class:`~batchrun.apis.Api`)."""

    def estimate_input_tokens(self, body: Mapping[str, Any]) -> int: ...

    def output_reservation(self, body: Mapping[str, Any]) -> int: ...

    def count_tokens_body(self, body: Mapping[str, Any]) -> dict[str, Any] | None: ...


DEFAULT_PAUSE_S = 1.0  # a 429 without retry-after still pauses its model this long
_COUNT_CACHE = 4096


class RateBudget:
    """A :class:`~batchrun.schedule.limits.budget.Budget` with buckets per model.

    ``store`` makes the store of one model's buckets, given the model's catalogue id (an alias
    or dated snapshot is the model it names; an unknown id is itself); it is called once per
    model.
    """

    def __init__(
        self,
        configured: Mapping[str, int | None],
        store: StoreFor,
        *,
        cost: RequestCost,
        max_concurrency: int,
        clock: Callable[[], float] = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        max_wait_s: float | None = None,
        count_tokens: CountTokens | None = None,
    ) -> None:
        self._configured = {name: configured.get(name) for name in LIMIT_KEYS}
        self._store_for = store
        self._by_body: dict[Any, ModelBudget] = {}  # by the body's "model", as sent
        self._by_id: dict[str, ModelBudget] = {}  # by the catalogue's id, one per model
        self._clock = clock
        self._sleep = sleep
        self._max_wait_s = max_wait_s
        self._cost = cost
        self._count_tokens = count_tokens
        self._counts: dict[str, int] = {}
        self._slots = AdaptiveConcurrency(max_concurrency)
        self._rate_limited = 0
        self._overloaded = 0
        self._shown = self._limits()
        if any(v is not None for v in self._shown.values()):
            log.info("batchrun.limits.effective", **self.snapshot())

    # -- acquire ---------------------------------------------------------------------------

    async def acquire(self, body: dict[str, Any], *, deadline: float | None = None) -> Reservation:
        started = self._clock()
        epoch = await self._slots.acquire()
        model = body.get("model", "")
        try:
            lane = self._by_body.get(model) or self._add(model)
            wants = await self._wants(lane.specs, body)
            refuse_if_never_fits(body, wants)
            await lane.wait(wants, deadline)
        except BaseException:
            self._slots.release()
            raise
        waited = max(0.0, self._clock() - started)
        return Reservation(wants, epoch, waited, slot=True, model=model)

    def _add(self, model: Any) -> ModelBudget:
        """The budget of a model the run had not sent before (an alias of one it had shares)."""
        name = str(model)
        info = lookup(name)
        key = info.id if info is not None else name
        lane = self._by_id.get(key)
        if lane is None:
            lane = ModelBudget(
                name,
                self._configured,
                self._store_for(key),
                clock=self._clock,
                sleep=self._sleep,
                max_wait_s=self._max_wait_s,
            )
            self._by_id[key] = lane
        self._by_body[model] = lane
        self._report()
        return lane

    async def _wants(
        self, specs: Mapping[str, BucketSpec], body: dict[str, Any]
    ) -> tuple[Want, ...]:
        wants = []
        for name, spec in specs.items():
            if name == "requests":
                wants.append(Want(spec, 1))
            elif name == "input_tokens":
                wants.append(Want(spec, await self._input_tokens(body)))
            else:
                wants.append(Want(spec, self._cost.output_reservation(body)))
        return tuple(wants)

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
        lane = self._by_body.get(reservation.model)
        if lane is None:  # not one of ours: nothing was taken
            return
        views = read_ratelimit_headers(attempt.ratelimit_headers)
        if views and lane.learn(views):
            self._report()
        pause_s = _pause_s(attempt)
        changes = lane.give_back(reservation.wants, attempt) + lane.tighten(views, attempt, pause_s)
        self._on_outcome(lane, reservation, attempt, pause_s)
        lane.adjust(changes, pause_s)

    def _on_outcome(
        self, lane: ModelBudget, reservation: Reservation, attempt: Attempt, pause_s: float
    ) -> None:
        """Count the outcome, pause the model on a 429 and feed AIMD."""
        error = attempt.error
        if pause_s > 0:
            self._rate_limited += 1
            lane.pause(pause_s)
            log.warning(
                "batchrun.limits.paused",
                model=lane.name,
                pause_s=round(pause_s, 3),
                **self.snapshot(),
            )
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

    # -- the rest --------------------------------------------------------------------------

    def _report(self) -> None:
        """Log ``batchrun.limits.effective`` when the limits shown change."""
        shown = self._limits()
        if shown != self._shown:
            self._shown = shown
            log.info("batchrun.limits.effective", **self.snapshot())

    def _limits(self) -> Snapshot:
        """The limits reported: the configured ones before any request, one model's under the
        plain keys, several models' each under ``<model>.``."""
        lanes = list(self._by_id.values())
        if not lanes:
            return {key: self._configured[name] for name, key in LIMIT_KEYS.items()}
        if len(lanes) == 1:
            return dict(lanes[0].reported)
        return {f"{lane.name}.{key}": v for lane in lanes for key, v in lane.reported.items()}

    def snapshot(self) -> Snapshot:
        out: Snapshot = {
            "concurrency": self._slots.slots,
            "max_concurrency": self._slots.maximum,
            "in_flight": self._slots.in_use,
        }
        lanes = list(self._by_id.values())
        if len(lanes) <= 1:
            out.update(self._limits())
            out["paused_s"] = lanes[0].paused_s() if lanes else 0.0
        else:
            for lane in lanes:
                for key, value in lane.reported.items():
                    out[f"{lane.name}.{key}"] = value
                out[f"{lane.name}.paused_s"] = lane.paused_s()
        out["rate_limited"] = self._rate_limited
        out["overloaded"] = self._overloaded
        return out

    async def aclose(self) -> None:
        for lane in self._by_id.values():
            await lane.aclose()


def _pause_s(attempt: Attempt) -> float:
    """How long a 429 pauses its model (0.0 for any other outcome)."""
    error = attempt.error
    if attempt.http_status != 429 and (error is None or error.http_status != 429):
        return 0.0
    retry_after = error.retry_after if error is not None else None
    if retry_after is None:
        retry_after = read_retry_after(attempt.ratelimit_headers)
    return DEFAULT_PAUSE_S if retry_after is None else retry_after
