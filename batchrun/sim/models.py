"""Simulator: the models it knows, and what each accepts. Pure data; no HTTP.

The list is batchrun's model catalogue (``batchrun.job.catalogue``, a data file the simulator
shares with the job checks; it holds no client code): whether a model is retired, its output
limit and context window, its kind of thinking and whether it takes sampling parameters. With
``SimConfig.models: known`` an id the catalogue does not know, or knows as retired, answers 404
as on the API; with ``any`` (the default, so that jobs naming test models keep working) every
``claude-*`` id is served, unknown ones with defaults.
It must not validate requests (``validate`` does) nor know prices.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

__all__ = ["DEFAULT", "ModelSpec", "Thinking", "lookup"]

Thinking = Literal["adaptive", "adaptive_always", "enabled", "none"]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model as the simulator serves it."""

    id: str
    retired: bool = False
    max_output: int | None = None  # None: SimConfig.max_tokens_limit
    context_window: int | None = None  # None: validate.CONTEXT_WINDOW
    thinking: Thinking = "enabled"
    sampling: bool = True  # False: non-default temperature/top_p/top_k are refused


DEFAULT = ModelSpec("")


@functools.cache
def lookup(model: str) -> ModelSpec | None:
    """The model named ``model`` (an id, alias or dated snapshot), or ``None`` if unknown."""
    # Imported on first use: the catalogue reads its data file once, and a job file that only
    # names SimConfig need not load it.
    from batchrun.job.catalogue import lookup as find

    info = find(model)
    if info is None:
        return None
    return ModelSpec(
        id=info.id,
        retired=info.status == "retired",
        max_output=info.max_output,
        context_window=info.context_window,
        thinking=info.thinking,
        sampling=info.sampling,
    )
