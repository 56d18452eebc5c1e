"""Simulator: a JSON value of a JSON schema's shape, drawn from a seeded generator. Pure.

For structured output (``output_config.format``) and tool inputs (``input_schema``): types,
``properties`` (every ``required`` one, and each optional one by a draw), ``enum``, ``const``,
``items`` with ``minItems``/``maxItems``, ``anyOf``/``oneOf`` (one branch), ``$ref`` into
``$defs``/``definitions``, string ``minLength``/``maxLength`` and number bounds. A generator,
not a validator: it makes what the schema asks for and never checks anything else.
It must not know about requests or the wire.
"""

from __future__ import annotations

import random
from typing import Any

__all__ = ["instance"]

_WORDS = (  # noqa: SIM905
    "alpha river quiet signal garden amber north lantern copper meadow orbit harbor"
).split()
_MAX_DEPTH = 12


def instance(schema: Any, rng: random.Random) -> Any:
    """A value of ``schema``'s shape (``{}`` or ``True``: a short string)."""
    root = schema if isinstance(schema, dict) else {}
    return _value(root, root, rng, 0)


def _value(schema: Any, root: dict[str, Any], rng: random.Random, depth: int) -> Any:
    if not isinstance(schema, dict):
        return _word(rng)
    if "$ref" in schema:
        return _value(_resolve(root, str(schema["$ref"])), root, rng, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _value(rng.choice(schema[key]), root, rng, depth + 1)
    if isinstance(schema.get("allOf"), list) and schema["allOf"]:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            if isinstance(part, dict):
                merged.update(part)
        return _value(merged, root, rng, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = rng.choice([k for k in kind if k != "null"] or ["null"])
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    if depth > _MAX_DEPTH:
        kind = "null" if kind in ("object", "array") else kind
    return _of_type(str(kind), schema, root, rng, depth)


def _of_type(
    kind: str, schema: dict[str, Any], root: dict[str, Any], rng: random.Random, depth: int
) -> Any:
    if kind == "object":
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        return {
            name: _value(sub, root, rng, depth + 1)
            for name, sub in properties.items()
            if name in required or rng.random() < 0.5
        }
    if kind == "array":
        low = int(schema.get("minItems", 1))
        high = int(schema.get("maxItems", max(low, 3)))
        return [
            _value(schema.get("items", {}), root, rng, depth + 1)
            for _ in range(rng.randint(low, max(low, high)))
        ]
    if kind == "integer":
        lo, hi = _bounds(schema, 0, 100)
        return rng.randint(int(lo), int(max(lo, hi)))
    if kind == "number":
        lo, hi = _bounds(schema, 0.0, 100.0)
        return round(rng.uniform(lo, max(lo, hi)), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return _string(schema, rng)


def _bounds(schema: dict[str, Any], low: float, high: float) -> tuple[float, float]:
    low = float(schema.get("minimum", schema.get("exclusiveMinimum", low - 1) + 1))
    high = float(schema.get("maximum", schema.get("exclusiveMaximum", high + 1) - 1))
    return low, high


def _string(schema: dict[str, Any], rng: random.Random) -> str:
    low = int(schema.get("minLength", 0))
    high = int(schema.get("maxLength", max(low, 40)))
    text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 4)))
    while len(text) < low:
        text += " " + rng.choice(_WORDS)
    return text[: max(low, high)]


def _word(rng: random.Random) -> str:
    return rng.choice(_WORDS)


def _resolve(root: dict[str, Any], ref: str) -> Any:
    """``#/$defs/Name`` (or ``#/definitions/Name``, or any ``#/a/b`` path) inside ``root``."""
    node: Any = root
    for part in ref.removeprefix("#").strip("/").split("/"):
        if not part:
            continue
        node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}
