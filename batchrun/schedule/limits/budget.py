"""Limits: the seam the stream driver sees. What a budget promises, hands out and refuses.

The stream driver awaits :meth:`Budget.acquire` before every attempt (retries included) and calls
:meth:`Budget.settle` after it, in a ``finally``, with the :class:`~batchrun.models.Attempt` as
it stands. A wait that would exceed its bound raises :class:`BudgetWaitError` from ``acquire``:
no reservation is held then, and there is nothing to settle; a request that no wait would ever
let through (:class:`RequestTooLargeError`) is refused the same way, at once. This module holds
no policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from batchrun.errors import PermanentError
from batchrun.models import Attempt
from batchrun.schedule.limits.bucket import Want

__all__ = [
    "Budget",
    "BudgetWaitError",
    "RequestTooLargeError",
    "Reservation",
    "Snapshot",
    "Unlimited",
]

Snapshot = dict[str, int | float | None]


class BudgetWaitError(PermanentError):
    """Waiting for the budget would take longer than allowed: the request becomes an error row.

    Raised by ``acquire`` when the model is paused (a 429's ``retry-after``) for longer than
    ``max_wait_s``, or when any wait would pass the caller's ``deadline``. ``error_type`` is
    ``rate_limit_wait``; ``retry_after`` is the wait that was refused.
    """


class RequestTooLargeError(BudgetWaitError):
    """The request needs more of a bucket than its whole per-minute limit: no wait would ever
    let it through, and taking it would leave a debt that stalls every other request for
    minutes. It ends at once, never sent, with the ``error_type`` the API would answer:
    ``request_too_large`` for a body over the API's size limit, else ``rate_limit_error``.
    """


@dataclass(slots=True, eq=False)
class Reservation:
    """What ``acquire`` took for one attempt. Opaque to the driver but for ``waited_s``, the
    seconds ``acquire`` spent waiting (for a slot, the buckets or a pause)."""

    wants: tuple[Want, ...] = ()
    epoch: int = 0
    waited_s: float = 0.0
    slot: bool = False
    model: str = ""  # the body's "model": whose buckets ``wants`` were taken from
    settled: bool = field(default=False, repr=False)


class Budget(Protocol):
    async def acquire(self, body: dict[str, Any], *, deadline: float | None = None) -> Reservation:
        """Wait until this request body may be sent: a concurrency slot, then its model's
        requests, input-tokens (estimated) and output-tokens (``max_tokens`` reserved) buckets,
        and no pause of its model. ``deadline`` is a reading of the budget's clock after which
        the attempt may not start (the run's patience)."""
        ...

    def settle(self, reservation: Reservation, attempt: Attempt) -> None:
        """After every attempt, failed or cancelled too: give back unused output tokens, correct
        the input estimate, learn from rate-limit headers, pause the model on a 429, adapt
        concurrency to overloads and successes. Never raises; a second call is ignored."""
        ...

    def snapshot(self) -> Snapshot:
        """The effective limits and concurrency now, for the progress display and the logs."""
        ...

    async def aclose(self) -> None:
        """Finish pending store updates and release the store."""
        ...


class Unlimited:
    """No limits, no pause, no adaptation: every attempt goes at once (tests, benchmarks)."""

    async def acquire(self, body: dict[str, Any], *, deadline: float | None = None) -> Reservation:
        return Reservation()

    def settle(self, reservation: Reservation, attempt: Attempt) -> None:
        return None

    def snapshot(self) -> Snapshot:
        return {}

    async def aclose(self) -> None:
        return None
