"""Time, injectable: a monotonic clock for durations and wall timestamps derived from it, and
the async sleep every wait goes through.

Every stage takes its clock and its sleep as parameters from the composition root, so tests of
backoff and rate limits run in milliseconds. This module must not wait or read time itself
beyond its defaults.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

__all__ = ["Clock", "Sleep"]

Sleep = Callable[[float], Awaitable[None]]
"""An async sleep: ``asyncio.sleep`` in a run, a recorder (that may move a fake clock) in tests."""


@dataclass(frozen=True, slots=True)
class Clock:
    """Monotonic time for durations, and wall time derived from it for timestamps.

    Deriving timestamps from one monotonic reading keeps them consistent with the durations
    beside them, whatever the wall clock does during a run.
    """

    monotonic: Callable[[], float] = time.perf_counter
    origin_wall: datetime = field(default_factory=lambda: datetime.now(UTC))
    origin_mono: float = field(init=False)

    def __post_init__(self) -> None:
        # Read right after the wall clock: the two origins name the same instant.
        object.__setattr__(self, "origin_mono", self.monotonic())

    def now(self) -> float:
        return self.monotonic()

    def wall(self, mono: float) -> datetime:
        return self.origin_wall + timedelta(seconds=mono - self.origin_mono)

    def epoch_ns(self, mono: float) -> int:
        """A monotonic reading as nanoseconds since the epoch (OpenTelemetry's unit)."""
        return int(self.wall(mono).timestamp() * 1e9)
