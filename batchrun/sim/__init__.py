"""The built-in simulator of the Anthropic API: a real HTTP server on loopback.

It speaks the Messages and legacy Complete APIs (streaming and not) as of version 2026-10-21,
validates requests as the API does, writes deterministic replies on a configurable schedule and
injects the faults that :class:`SimConfig` asks for. Modules, in request order: ``server``
(routes) → ``validate`` (with ``models``, the catalogue's view) → ``faults`` → ``cache`` (prompt
caching) → ``turn`` (the reply's blocks: thinking, text from ``text``, JSON from ``schema``, tool
use) → ``events`` (wire bytes) → ``stream`` (timing); ``responses`` holds the API's error
shapes, ``stats`` what happened, ``background`` the thread runner; ``batches`` serves the
Message Batches API, and ``state`` is what it and ``server`` share.
It must not import batchrun's client side: the simulator is an independent party (the model
catalogue, ``batchrun.job.catalogue``, is data both sides read).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from batchrun.sim.config import Fault, FaultKind, SimConfig
from batchrun.sim.stats import SimStats, StreamTiming

if TYPE_CHECKING:
    from batchrun.sim.background import SimServer
    from batchrun.sim.server import create_app, serve

# The server side (aiohttp) loads on first use: a job file names SimConfig, and reading one
# (``batchrun validate``) must not pay for a web server it never starts.
_LAZY = {"SimServer": "background", "create_app": "server", "serve": "server"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"batchrun.sim.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Fault",
    "FaultKind",
    "SimConfig",
    "SimServer",
    "SimStats",
    "StreamTiming",
    "create_app",
    "serve",
]
