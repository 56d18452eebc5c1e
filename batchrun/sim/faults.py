"""Simulator: which fault, if any, an attempt suffers. Pure selection; no HTTP, no clock.

The attempt number is how many times the server has seen this exact body on this path. A rule
selects an attempt when its ``attempts`` and ``match`` allow it and a draw seeded by
(seed, body, attempt, rule position) falls under its ``rate``; the first rule that selects wins.
Draws come from SHA-256, so they are the same in every process and on every platform.
It must not decide what a fault looks like on the wire (that is ``responses`` and ``stream``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from batchrun.sim.config import Fault, FaultKind

__all__ = ["MIDSTREAM", "AttemptCounter", "select_fault"]

# Faults that happen after an HTTP 200 and some deltas.
MIDSTREAM: frozenset[FaultKind] = frozenset(
    {"overloaded_midstream", "disconnect_midstream", "stall_midstream", "malformed", "truncated"}
)


class AttemptCounter:
    """Counts how often each (path, body) was seen, and how many replies it was given. One event
    loop owns it: no lock needed.

    Keys are 16-byte digests, so a million distinct requests cost tens of megabytes.
    """

    def __init__(self) -> None:
        self._seen: dict[bytes, int] = {}
        self._replies: dict[bytes, int] = {}

    def draw(self, digest: bytes, *, take: bool) -> int:
        """The 1-based number of the reply this body gets now: one more than the replies given
        so far. ``take`` counts it as given; a faulted attempt does not take it, so that the
        retry gets the reply the fault interrupted while the samples of a row (the same body,
        answered each time) get one each."""
        number = self._replies.get(digest, 0) + 1
        if take:
            self._replies[digest] = number
        return number

    def next(self, path: str, body: bytes) -> tuple[bytes, int]:
        """Record one more sighting; return the body's digest and its 1-based attempt number."""
        digest = hashlib.sha256(path.encode() + b"\0" + body).digest()[:16]
        attempt = self._seen.get(digest, 0) + 1
        self._seen[digest] = attempt
        return digest, attempt


def _draw(seed: int, digest: bytes, attempt: int, rule: int) -> float:
    """A uniform number in [0, 1), a pure function of its arguments."""
    data = b"%d:%d:%d:" % (seed, attempt, rule) + digest
    return int.from_bytes(hashlib.sha256(data).digest()[:8]) / 2**64


def select_fault(
    faults: Sequence[Fault], *, seed: int, body: bytes, digest: bytes, attempt: int
) -> Fault | None:
    """The first rule of ``faults`` that selects this attempt, or ``None``."""
    text: str | None = None
    for position, fault in enumerate(faults):
        if fault.attempts is not None and attempt not in fault.attempts:
            continue
        if fault.match is not None:
            if text is None:
                text = body.decode("utf-8", errors="replace")
            if fault.match not in text:
                continue
        if fault.rate >= 1.0 or _draw(seed, digest, attempt, position) < fault.rate:
            return fault
    return None
