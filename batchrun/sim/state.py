"""Simulator: what its routes share. The per-server state, and the model's reply to a request.

``server`` (Messages, Complete) and ``batches`` (Message Batches) both take these from here, so
that neither imports the other and a request gets the same reply through either. It must not
route, validate or encode anything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from batchrun.sim.cache import PromptCache, segments
from batchrun.sim.config import SimConfig
from batchrun.sim.faults import AttemptCounter
from batchrun.sim.responses import RateLimits, StaticLimits
from batchrun.sim.stats import SimStats
from batchrun.sim.text import Reply, generate
from batchrun.sim.turn import Turn, model_turn
from batchrun.sim.validate import GenRequest

__all__ = ["STATE", "SimState", "message_turn", "model_reply"]


@dataclass
class SimState:
    """Everything the handlers share across requests. Owned by the server's event loop."""

    config: SimConfig
    stats: SimStats = field(default_factory=SimStats)
    limits: RateLimits = field(default_factory=StaticLimits)
    attempts: AttemptCounter = field(default_factory=AttemptCounter)
    inflight: set[asyncio.Task[Any]] = field(default_factory=set)
    cache: PromptCache = field(default_factory=PromptCache)
    clock: Callable[[], float] = time.monotonic  # prompt-cache lifetimes; tests move it


STATE = web.AppKey("batchrun_sim_state", SimState)


def message_turn(state: SimState, req: GenRequest, draw: int, *, tier: str = "standard") -> Turn:
    """The Messages reply to a validated request, whichever route it came by: its prompt meets
    the cache now (reading and writing it), then the model answers. ``draw`` numbers the
    replies to this exact body on its route (``AttemptCounter.draw``): each is another reply."""
    use = state.cache.use(req.model, segments(req.body), state.clock())
    return model_turn(state.config, req, draw=draw, cache=use, tier=tier)


def model_reply(config: SimConfig, req: GenRequest, draw: int = 1) -> Reply:
    """The legacy Complete reply to a validated request (see :func:`message_turn`)."""
    legacy = req.api == "complete"
    return generate(
        config.seed,
        req.key,
        min_tokens=config.min_output_tokens,
        max_tokens=config.max_output_tokens,
        cap=req.max_tokens,
        stop_sequences=req.stop_sequences,
        natural_stop="stop_sequence" if legacy else "end_turn",
        leading_space=legacy,
        draw=draw,
    )
