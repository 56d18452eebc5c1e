"""Stage 3: whether the endpoint answers at all, judged from the attempts of the whole pool.

An attempt *reached* the endpoint when a response came (any status, 529 included) or, still
open, it brings content; it *failed to reach* it when it could not connect or timed out before
a response. When attempts fail to reach it and none reaches it for ``window_s``, the endpoint
counts as down and ``on_down`` is told once: the run stops (exit 69) instead of turning every
row into a ``connection_error``. The rows of requests that gave up during such a streak are held
(:meth:`after_streak`) until the streak ends: written when an attempt gets a response, dropped
when the endpoint is declared down, so that a run stopped for it records no row for them. Their
workers go on meanwhile: a held row never keeps the pool from the attempt that may end the
streak. Pure bookkeeping: the stream driver feeds it attempts and calls :meth:`check` on a
timer; it sends nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from batchrun.errors import EndpointUnreachable
from batchrun.models import Attempt

__all__ = ["UNREACHABLE_WINDOW_S", "Reachability", "failed_to_reach"]

UNREACHABLE_WINDOW_S = 30.0  # with connect timeouts of 10 s, a dead endpoint stops a run < 1 min

_UNREACHED = frozenset({"connection_error", "timeout"})


def failed_to_reach(attempt: Attempt) -> bool:
    """The attempt got no response at all: it could not connect, or timed out before one."""
    error = attempt.error
    return attempt.http_status is None and error is not None and error.error_type in _UNREACHED


class Reachability:
    """Tracks the current streak of attempts that failed to reach ``url``."""

    def __init__(
        self,
        url: str,
        *,
        window_s: float,
        clock: Callable[[], float],
        on_down: Callable[[EndpointUnreachable], None],
    ) -> None:
        self.url = url
        self.window_s = window_s
        self._clock = clock
        self._on_down = on_down
        self._since: float | None = None  # first failure of the streak, if one is on
        self._failures = 0
        self._last_error = ""
        # What to do with each held row: (when the streak ends with a response, when down).
        self._held: list[tuple[Callable[[], None], Callable[[], None]]] = []
        self.drained = asyncio.Event()  # no row is held
        self.drained.set()
        self.down = False

    def saw(self, attempt: Attempt) -> None:
        """Count one finished attempt."""
        if attempt.http_status is not None:
            self.alive()
        elif failed_to_reach(attempt):
            assert attempt.error is not None
            if self._since is None:
                self._since = self._clock()
            self._failures += 1
            self._last_error = str(attempt.error)
            self.check()

    def alive(self) -> None:
        """Content arrived on an attempt still open: the endpoint answers (a long stream
        must not look like silence while others fail)."""
        if self._since is not None:
            self._since, self._failures = None, 0
            self._release(0)

    def check(self) -> None:
        """Declare the endpoint down once a streak has lasted ``window_s``."""
        if self.down or self._since is None or self._clock() - self._since < self.window_s:
            return
        self.down = True
        self._release(1)
        self._on_down(
            EndpointUnreachable(self.url, self._last_error, self.window_s, self._failures)
        )

    def after_streak(self, record: Callable[[], None], drop: Callable[[], None]) -> None:
        """``record`` a row now, or, while a streak is on, once it ends with a response;
        ``drop`` it instead if the endpoint is declared down."""
        if self.down:
            drop()
        elif self._since is None:
            record()
        else:
            self._held.append((record, drop))
            self.drained.clear()

    def _release(self, which: int) -> None:
        held, self._held = self._held, []
        for actions in held:
            actions[which]()
        self.drained.set()
