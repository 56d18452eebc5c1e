"""Limits, pure arithmetic: continuously refilling token buckets, taken all-or-nothing.

A bucket holds at most ``capacity`` (one second's worth of its per-minute rate) and refills at
``rate`` per second. A request may go when every bucket it needs holds ``min(amount, capacity)``;
it then takes its whole ``amount``, so an amount larger than the burst drives the level below zero
(a debt the refill pays back before anyone else goes). Over any window of ``T`` seconds at most
``capacity + rate * T`` (plus one oversized request) is taken. A bucket starts empty: a run that
starts (or a store that is new) sends nothing faster than the rate, not even a first burst.

No clocks, no I/O, no locks: the stores call this with the time they read inside their own
critical section.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["BURST_S", "Adjust", "BucketSpec", "Level", "Want", "adjust_level", "refill", "take"]

BURST_S = 1.0  # a bucket's capacity in seconds of its rate: the burst the issue allows
_EPSILON = 1e-9  # float slack, so that sleeping exactly the computed wait is always enough


@dataclass(frozen=True, slots=True)
class BucketSpec:
    """One named budget: ``rate`` units a second, holding at most ``capacity`` units."""

    name: str  # "requests" | "input_tokens" | "output_tokens"
    rate: float
    capacity: float

    @classmethod
    def per_minute(cls, name: str, limit: float) -> BucketSpec:
        """The bucket of a per-minute ``limit``, with a burst of :data:`BURST_S` seconds."""
        rate = limit / 60.0
        return cls(name, rate, rate * BURST_S)


@dataclass(frozen=True, slots=True)
class Want:
    """``amount`` units of the bucket ``spec``, wanted by one request."""

    spec: BucketSpec
    amount: float


@dataclass(frozen=True, slots=True)
class Adjust:
    """A change to a bucket after the fact: ``give`` back (negative: charge more), then lower
    the level to ``at_most`` if it is higher (what the server says is left)."""

    spec: BucketSpec
    give: float = 0.0
    at_most: float | None = None


@dataclass(frozen=True, slots=True)
class Level:
    """A bucket's stored state: its level at time ``updated``."""

    level: float
    updated: float


def refill(state: Level | None, spec: BucketSpec, now: float) -> Level:
    """The bucket's state at ``now``. A clock that went backwards refills nothing."""
    if state is None:
        return Level(0.0, now)
    elapsed = max(0.0, now - state.updated)
    level = min(spec.capacity, state.level + elapsed * spec.rate)
    return Level(level, max(now, state.updated))


def take(
    states: Mapping[str, Level], wants: Sequence[Want], now: float
) -> tuple[dict[str, Level], float, str | None]:
    """Take every want if all buckets allow it, or nothing.

    Returns the new states of the buckets wanted (refilled to ``now``, and taken from if taken:
    store them either way), the seconds to wait before trying again (0.0 when taken) and the
    name of the bucket that is shortest (``None`` when taken).
    """
    current = {w.spec.name: refill(states.get(w.spec.name), w.spec, now) for w in wants}
    wait, reason = 0.0, None
    for want in wants:
        need = min(want.amount, want.spec.capacity)
        short = need - current[want.spec.name].level
        if short > _EPSILON * max(1.0, need):
            w = short / want.spec.rate
            if w > wait:
                wait, reason = w, want.spec.name
    if reason is not None:
        return current, wait, reason
    taken = {
        w.spec.name: Level(current[w.spec.name].level - w.amount, current[w.spec.name].updated)
        for w in wants
    }
    return taken, 0.0, None


def adjust_level(state: Level | None, change: Adjust, now: float) -> Level:
    """Apply ``change`` to a bucket, after refilling it to ``now``."""
    current = refill(state, change.spec, now)
    level = min(change.spec.capacity, current.level + change.give)
    if change.at_most is not None:
        level = min(level, change.at_most)
    return Level(level, current.updated)
