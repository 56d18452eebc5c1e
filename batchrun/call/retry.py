"""The retry policy: which failures earn another attempt, and how long to wait first.

The retried unit is a whole attempt, "open the stream and read it to the end"; a half-read
stream is never resumed. Only :class:`~batchrun.errors.RetryableError` is retried; a server's
``retry-after`` is honoured (one longer than ``max_backoff_s`` ends the request instead of
hanging it), otherwise the wait is :class:`Backoff`'s, exponential with full jitter (between 0
and a ceiling doubling from ``initial_backoff_s`` up to ``max_backoff_s``). After the last
attempt the original error surfaces, not a wrapper. This is the only module that imports
tenacity, and :class:`Backoff` is the only backoff (batch mode's polling and create retries use
it too); it knows nothing of HTTP, and its sleep is injectable so tests never wait.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
)

from batchrun.clock import Sleep
from batchrun.errors import RetryableError

__all__ = ["Backoff", "RetryPolicy"]

T = TypeVar("T")
OnRetry = Callable[[RetryableError, float, int], None]

_MAX_DOUBLINGS = 64  # past this the ceiling is max_s for any sane setting, and 2.0**n stays finite


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter, the one batchrun uses.

    The wait after ``failures`` failures in a row (1-based) is uniform between 0 and
    ``min(max_s, initial_s * 2 ** (failures - 1))``, the first included: clients that failed
    together (an overload burst) must not come back together, which a fixed first wait makes
    them do. This is tenacity's ``wait_random_exponential(multiplier=initial_s, max=max_s)``,
    computed from a count rather than from tenacity's call state so that code outside a
    tenacity loop (batch polling) can ask for it.
    """

    initial_s: float
    max_s: float

    def wait_s(self, failures: int) -> float:
        doublings = min(max(failures - 1, 0), _MAX_DOUBLINGS)
        ceiling = min(self.max_s, self.initial_s * 2.0**doublings)
        return random.uniform(0.0, ceiling)


class RetryPolicy:
    """Runs ``fn(attempt_number, backoff_s)`` until it succeeds, fails for good, or runs out.

    ``attempt_number`` is 1-based; ``backoff_s`` is what was slept just before this attempt.
    ``on_retry(error, wait_s, next_attempt)`` is told of each retry before the wait.
    """

    def __init__(
        self,
        *,
        max_attempts: int,
        initial_backoff_s: float,
        max_backoff_s: float,
        sleep: Sleep = asyncio.sleep,
        on_retry: OnRetry | None = None,
    ) -> None:
        self.max_attempts = max_attempts
        self.max_backoff_s = max_backoff_s
        self._backoff = Backoff(initial_backoff_s, max_backoff_s)
        self._sleep = sleep
        self._on_retry = on_retry

    def _worth_retrying(self, exc: BaseException) -> bool:
        """Retryable, unless the server asks for a longer wait than the job allows: then the
        request ends now with that error rather than hanging."""
        if not isinstance(exc, RetryableError):
            return False
        return exc.retry_after is None or exc.retry_after <= self.max_backoff_s

    def wait_s(self, state: RetryCallState) -> float:
        """The wait before the next attempt: ``retry-after`` if the server gave one."""
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            return exc.retry_after
        return self._backoff.wait_s(state.attempt_number)

    async def call(self, fn: Callable[[int, float], Awaitable[T]]) -> T:
        slept = 0.0

        async def sleep(seconds: float) -> None:
            nonlocal slept
            slept = seconds
            await self._sleep(seconds)

        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if self._on_retry is not None and isinstance(exc, RetryableError):
                wait = state.next_action.sleep if state.next_action else 0.0
                self._on_retry(exc, wait, state.attempt_number + 1)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.max_attempts),
            retry=retry_if_exception(self._worth_retrying),
            wait=self.wait_s,
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        number = 0

        async def attempt() -> T:
            nonlocal number
            number += 1
            return await fn(number, slept)

        try:
            return await retrying(attempt)
        finally:
            # tenacity keeps its next actions (bound methods of itself) on the object: a
            # reference cycle per request that only the garbage collector's slower passes
            # reclaim, ~40 objects each. Cleared here, the whole controller is freed at once.
            retrying.iter_state.reset()
