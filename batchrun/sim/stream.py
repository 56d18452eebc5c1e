"""Simulator: plays a pre-encoded stream onto the wire on schedule, with mid-stream faults.

:func:`plan` turns a :class:`~batchrun.sim.events.Script` and a fault into timed steps (pure);
:func:`play` writes them. Times are offsets from a start instant: the head at 0, the first delta
at ``ttft_s``, then one delta every ``token_interval_s``. Every step already due is written in one
``write`` call, so with zero delays a whole stream is one write and nothing sleeps; late steps
never accumulate drift because each is due at an absolute time. It must not build events,
validate requests or pick faults.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal, NamedTuple

from aiohttp import web

from batchrun.sim.config import Fault
from batchrun.sim.events import Script
from batchrun.sim.faults import MIDSTREAM

__all__ = ["Ending", "Step", "plan", "play"]

Ending = Literal["complete", "eof", "abort"]


class Step(NamedTuple):
    """Bytes due ``at`` seconds after the start; ``first`` marks the first content event.

    A named tuple rather than a dataclass: a stream has one per token, made per request."""

    at: float
    data: bytes
    first: bool = False


def plan(
    script: Script, fault: Fault | None, *, ttft_s: float, interval_s: float, stall_s: float
) -> tuple[list[Step], Ending]:
    """The steps to write and how the stream ends: ``complete`` (all events), ``eof`` (the body
    ends early but cleanly) or ``abort`` (the connection is cut)."""
    kind = fault.kind if fault is not None and fault.kind in MIDSTREAM else None
    deltas = script.deltas
    cut = len(deltas) if fault is None or kind is None else min(fault.after_deltas, len(deltas))
    steps = [Step(0.0, data) for data in script.head]
    steps += [Step(ttft_s + i * interval_s, d, first=i == 0) for i, d in enumerate(deltas[:cut])]
    next_at = ttft_s + cut * interval_s
    if kind == "overloaded_midstream":
        return [*steps, Step(next_at, script.error)], "eof"
    if kind == "disconnect_midstream":
        return steps, "abort"
    if kind == "truncated":
        return steps, "eof"
    shift = stall_s if kind == "stall_midstream" else 0.0
    if kind == "malformed":
        steps.append(Step(next_at, script.malformed))
    steps += [
        Step(ttft_s + i * interval_s + shift, deltas[i], first=i == 0)
        for i in range(cut, len(deltas))
    ]
    end_at = ttft_s + max(len(deltas) - 1, 0) * interval_s + shift
    steps += [Step(end_at, data) for data in script.tail]
    return steps, "complete"


async def play(
    response: web.StreamResponse,
    steps: list[Step],
    *,
    start: float,
    on_first_content: Callable[[float], None],
) -> bool:
    """Write ``steps`` on schedule from ``start`` (``loop.time()``); False if the client left."""
    loop = asyncio.get_running_loop()
    i = 0
    while i < len(steps):
        delay = start + steps[i].at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        due = loop.time() - start
        j = i + 1
        while j < len(steps) and steps[j].at <= due:
            j += 1
        batch = steps[i:j]
        try:
            await response.write(b"".join(step.data for step in batch))
        except ConnectionResetError:
            return False
        if any(step.first for step in batch):
            on_first_content(time.perf_counter())
        i = j
    return True
