"""The model catalogue: which Claude models exist, what each takes and what it costs.

Part of the job file's stage. The data is ``models.toml`` beside this module (one entry per model,
from Anthropic's docs; docs/api.md says how to refresh it); this module reads it once and answers
:func:`lookup` and :func:`models`. It drives the load-time checks (a retired model, ``max_tokens``
over the model's limit, thinking and sampling the model refuses), the default price table
(:data:`batchrun.job.prices.DEFAULT_PRICES`) and the simulator's model list. Reads only its own
data file; no network.
"""

from __future__ import annotations

import datetime
import re
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from batchrun.job.prices import ModelPrice

__all__ = ["ModelInfo", "Status", "Thinking", "lookup", "models"]

Status = Literal["active", "legacy", "deprecated", "retired"]
Thinking = Literal["adaptive", "adaptive_always", "enabled", "none"]

# A dated snapshot id: claude-sonnet-5-5-20261201 is claude-sonnet-5-5 on that date.
_SNAPSHOT = re.compile(r"^(?P<base>.+)-\d{8}$")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model as the catalogue has it."""

    id: str
    aliases: tuple[str, ...]
    status: Status
    retired_on: datetime.date | None  # the day it retired (retired) or retires (deprecated)
    successor: str | None  # what to use instead, for retired and deprecated models
    context_window: int
    max_output: int
    thinking: Thinking  # which `thinking` the model takes (models.toml explains each kind)
    sampling: bool  # accepts non-default temperature/top_p/top_k (on 2023-06-01)
    price: ModelPrice | None

    @property
    def names(self) -> tuple[str, ...]:
        """Every id the API takes for this model: its id, then its aliases."""
        return (self.id, *self.aliases)


def models() -> tuple[ModelInfo, ...]:
    """Every model in the catalogue, in the data file's order (current models first)."""
    return _catalogue()[0]


def lookup(model: str) -> ModelInfo | None:
    """The model named by an id, an alias, or a dated snapshot of either; ``None`` if unknown."""
    by_name = _catalogue()[1]
    found = by_name.get(model)
    if found is None and (snapshot := _SNAPSHOT.match(model)) is not None:
        found = by_name.get(snapshot["base"])
    return found


@cache
def _catalogue() -> tuple[tuple[ModelInfo, ...], dict[str, ModelInfo]]:
    text = resources.files("batchrun.job").joinpath("models.toml").read_text(encoding="utf-8")
    entries = tuple(_entry(raw) for raw in tomllib.loads(text)["model"])
    by_name: dict[str, ModelInfo] = {}
    for info in entries:
        for name in info.names:
            if name in by_name:
                raise ValueError(f"models.toml: {name} is named twice")
            by_name[name] = info
    return entries, by_name


def _entry(raw: dict[str, Any]) -> ModelInfo:
    """One ``[[model]]`` table, checked: the data file is code, so a mistake fails loudly."""
    # Imported here: prices builds DEFAULT_PRICES from this module's models().
    from batchrun.job.prices import ModelPrice

    model_id = raw["id"]
    status, thinking = raw["status"], raw["thinking"]
    if status not in get_args(Status) or thinking not in get_args(Thinking):
        raise ValueError(f"models.toml: {model_id}: bad status {status!r} or thinking {thinking!r}")
    retired_on = raw.get("retired_on")
    if (retired_on is not None) != (status in ("retired", "deprecated")):
        raise ValueError(f"models.toml: {model_id}: retired_on goes with retired and deprecated")
    price = raw.get("price")
    return ModelInfo(
        id=model_id,
        aliases=tuple(raw.get("aliases", ())),
        status=status,
        retired_on=retired_on,
        successor=raw.get("successor"),
        context_window=int(raw["context_window"]),
        max_output=int(raw["max_output"]),
        thinking=thinking,
        sampling=bool(raw["sampling"]),
        price=ModelPrice.model_validate(price) if price is not None else None,
    )
