"""Limits: where the buckets live. The store protocol and the in-process store.

A store holds one model's named buckets and its "paused until" moment (the API limits each model
separately; :func:`shared_scope` names a model's state), and changes them atomically. It owns
the clock its operations are timed by, because the processes that share it must agree on time:
the SQLite store reads the host's monotonic clock inside its transaction; a network store (Redis)
would use its server's clock. So everything crossing this seam is a duration, never a timestamp.

Stores are synchronous and short; one whose calls touch a disk or a network says so with
``blocking = True`` and the budget runs its calls in a worker thread. This module must not
decide what to take (that is the budget) nor do bucket arithmetic (that is ``bucket``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from batchrun.schedule.limits.bucket import Adjust, Level, Want, adjust_level, take

__all__ = ["PAUSED", "BudgetStore", "MemoryStore", "StoreUnavailable", "shared_scope"]

PAUSED = "paused"  # the reason a take names when the model is paused after a 429


def shared_scope(key_fingerprint: str, model: str) -> str:
    """The name of one model's shared state under one API key and base URL (whose fingerprint
    is ``key_fingerprint``): a hex digest, so that neither key nor model reaches a file name.
    Processes using the same key, base URL and model share; other models never meet."""
    return hashlib.sha256(f"{key_fingerprint}\n{model}".encode()).hexdigest()


class StoreUnavailable(Exception):
    """A shared store cannot be used (a read-only or full disk, a lost server): the budget goes
    on with an in-process store, and says so in the log."""


class BudgetStore(Protocol):
    """One model's buckets and pause, shared by every budget that uses the same store."""

    blocking: bool

    def take(self, wants: Sequence[Want]) -> tuple[float, str | None]:
        """Atomically take every want, unless the pool is paused or a bucket is short.

        Returns ``(0.0, None)`` when taken, otherwise ``(seconds to wait, reason)`` with nothing
        taken; the reason is :data:`PAUSED` or the short bucket's name.
        """
        ...

    def adjust(self, changes: Sequence[Adjust], *, pause_s: float = 0.0) -> None:
        """Apply ``changes`` and pause the model for ``pause_s`` from now (a pause only ever
        grows), atomically."""
        ...

    def close(self) -> None: ...

    # Raise StoreUnavailable, from the underlying error, when the store cannot be used.


class MemoryStore:
    """Buckets in this process only (``limits.shared: false``, and tests)."""

    blocking = False

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._levels: dict[str, Level] = {}
        self._paused_until = float("-inf")

    def take(self, wants: Sequence[Want]) -> tuple[float, str | None]:
        now = self._clock()
        if self._paused_until > now:
            return self._paused_until - now, PAUSED
        states, wait, reason = take(self._levels, wants, now)
        self._levels.update(states)  # refilled even when short: a new bucket starts filling
        return wait, reason

    def adjust(self, changes: Sequence[Adjust], *, pause_s: float = 0.0) -> None:
        now = self._clock()
        for change in changes:
            name = change.spec.name
            self._levels[name] = adjust_level(self._levels.get(name), change, now)
        if pause_s > 0:
            self._paused_until = max(self._paused_until, now + pause_s)

    def close(self) -> None:
        return None
