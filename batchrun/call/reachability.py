"""Stage 3: whether the endpoint answers at all, judged from the attempts of the whole pool.

An attempt *reached* the endpoint when a response came (any status, 529 included) or, still
open, it brings content; it *failed to reach* it when it could not connect or timed out before
a response. When attempts fail to reach it and none reaches it for ``window_s``, the endpoint
counts as down and ``on_down`` is told once: the run stops (exit 69) instead of turning every
row into a ``connection_error``. Requests that gave up during such a streak wait
(:meth:`settled`) until the streak ends, so that a run stopped for it records no row for them.
Pure bookkeeping: the stream driver feeds it attempts and calls :meth:`check` on a timer; it
sends nothing.
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
        self._ended = asyncio.Event()  # the current streak ended with a response
        self.down = False

    def saw(self, attempt: Attempt) -> None:
        """Count one finished attempt."""
        if attempt.http_status is not None:
            self.alive()
        elif failed_to_reach(attempt):
            assert attempt.error is not None
            if self._since is None:
                self._since = self._clock()
                self._ended = asyncio.Event()
            self._failures += 1
            self._last_error = str(attempt.error)
            self.check()

    def alive(self) -> None:
        """Content arrived on an attempt still open: the endpoint answers (a long stream
        must not look like silence while others fail)."""
        if self._since is not None:
            self._since, self._failures = None, 0
            self._ended.set()

    def check(self) -> None:
        """Declare the endpoint down once a streak has lasted ``window_s``."""
        if self.down or self._since is None or self._clock() - self._since < self.window_s:
            return
        self.down = True
        self._on_down(
            EndpointUnreachable(self.url, self._last_error, self.window_s, self._failures)
        )

    async def settled(self) -> None:
        """Return at once unless a streak is on; then when an attempt gets a response (a run
        stopped for the endpoint being down cancels the wait instead)."""
        if self._since is not None:
            await self._ended.wait()
