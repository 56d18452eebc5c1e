"""Simulator: what its routes share. The per-server state, and the model's reply to a request.

``server`` (Messages, Complete) and ``batches`` (Message Batches) both take these from here, so
that neither imports the other and a request gets the same reply through either. It must not
route, validate or encode anything.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from batchrun.sim.config import SimConfig
from batchrun.sim.faults import AttemptCounter
from batchrun.sim.responses import RateLimits, StaticLimits
from batchrun.sim.stats import SimStats
from batchrun.sim.text import Reply, generate
from batchrun.sim.validate import GenRequest

__all__ = ["STATE", "SimState", "model_reply"]


@dataclass
class SimState:
    """Everything the handlers share across requests. Owned by the server's event loop."""

    config: SimConfig
    stats: SimStats = field(default_factory=SimStats)
    limits: RateLimits = field(default_factory=StaticLimits)
    attempts: AttemptCounter = field(default_factory=AttemptCounter)
    inflight: set[asyncio.Task[Any]] = field(default_factory=set)


STATE = web.AppKey("batchrun_sim_state", SimState)


def model_reply(config: SimConfig, req: GenRequest, draw: int = 1) -> Reply:
    """The "model"'s reply to a validated request, whichever route it came by. ``draw`` is how
    many times this exact body has been seen on its route: each sighting gets another reply."""
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
