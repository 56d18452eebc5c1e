"""Simulator: the models it knows, and what each accepts. Pure data; no HTTP.

What a model is to the simulator: whether it is retired, its output limit, its kind of thinking
and whether it takes sampling parameters. With ``SimConfig.models: known`` an id the table does
not know, or a retired one, answers 404 as on the API; with ``any`` (the default, so that jobs
naming test models keep working) every ``claude-*`` id is served, unknown ones with defaults.
It must not validate requests (``validate`` does) nor know prices.
"""

from __future__ import annotations

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
    thinking: Thinking = "enabled"
    sampling: bool = True  # False: non-default temperature/top_p/top_k are refused


DEFAULT = ModelSpec("")

_TABLE: tuple[ModelSpec, ...] = (
    ModelSpec("claude-fable-5-2", max_output=128_000, thinking="adaptive_always", sampling=False),
    ModelSpec("claude-opus-5-5", max_output=128_000, thinking="adaptive", sampling=False),
    ModelSpec("claude-sonnet-5-5", max_output=128_000, thinking="adaptive", sampling=False),
    ModelSpec("claude-haiku-5-5", max_output=128_000, thinking="adaptive", sampling=False),
    ModelSpec("claude-opus-5", max_output=128_000, thinking="adaptive", sampling=False),
    ModelSpec("claude-sonnet-5", max_output=64_000, thinking="adaptive", sampling=False),
    ModelSpec("claude-haiku-4-5", max_output=64_000),
    ModelSpec("claude-sonnet-4-5", retired=True),
    ModelSpec("claude-sonnet-4-5-20250929", retired=True),
)
_BY_ID = {spec.id: spec for spec in _TABLE}


def lookup(model: str) -> ModelSpec | None:
    """The model named ``model``, or ``None`` when the table does not know it."""
    return _BY_ID.get(model)
