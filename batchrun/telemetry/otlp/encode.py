"""The OTLP JSON pieces that spans and metrics share: attributes, resources, scopes, ids, numbers.

Builds plain dicts of the ``common.v1`` and ``resource.v1`` messages as proto3 JSON writes them,
field for field what ``MessageToDict`` makes of the official encoders' output: fields left at
their default omitted, 64-bit integers as strings, NaN and the infinities spelled out, trace and
span ids in hex as OTLP JSON wants. Pure: it must not write files, choose exporters or import the
protobuf modules (slow to load, and what :mod:`batchrun.telemetry.otlp.file` exists to avoid).
"""

from __future__ import annotations

import base64
import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

__all__ = [
    "Json",
    "attributes",
    "double",
    "int64",
    "resource",
    "scope",
    "span_id",
    "trace_id",
    "with_schema_url",
]

Json = dict[str, Any]

_logger = logging.getLogger(__name__)

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def with_schema_url(out: Json, schema_url: str | None) -> Json:
    if schema_url:
        out["schemaUrl"] = schema_url
    return out


def resource(res: Resource) -> Json:
    return {"attributes": attributes(res.attributes)} if res.attributes else {}


def scope(instrumentation: InstrumentationScope | None) -> Json:
    """``{}`` for a span without one, as the encoder sends an empty scope."""
    out: Json = {}
    if instrumentation is None:
        return out
    if instrumentation.name:
        out["name"] = instrumentation.name
    if instrumentation.version:
        out["version"] = instrumentation.version
    if instrumentation.attributes:
        out["attributes"] = attributes(instrumentation.attributes)
    return out


def attributes(pairs: Mapping[str, Any] | None) -> list[Json]:
    """As ``_encode_attributes``: a value that cannot be encoded (an integer beyond 64 bits, an
    unknown type) is logged and left out, rather than losing the whole request. The hottest loop
    of the encoding, so a plain string takes a shortcut."""
    out = []
    for key, value in (pairs or {}).items():
        try:
            encoded = {"stringValue": value} if type(value) is str else _any_value(value)
        except (TypeError, ValueError) as error:
            _logger.warning("Failed to encode key %s: %s", key, error)
            continue
        out.append({"key": key, "value": encoded} if key else {"value": encoded})
    return out


def _key_value(key: str, value: Any) -> Json:
    """A ``KeyValue``, whose empty key proto3 JSON leaves out like any default."""
    return {"key": key, "value": _any_value(value)} if key else {"value": _any_value(value)}


def _any_value(value: Any) -> Json:
    """An ``AnyValue``, tested in an order giving ``_encode_value``'s answers: bool before int,
    str and bytes before sequences."""
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": int64(value)}
    if isinstance(value, float):
        return {"doubleValue": double(value)}
    if value is None:
        return {}
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode()}
    if isinstance(value, Sequence):
        values = [_any_value(v) for v in value]
        return {"arrayValue": {"values": values} if values else {}}
    if isinstance(value, Mapping):
        pairs = [_key_value(str(k), v) for k, v in value.items()]
        return {"kvlistValue": {"values": pairs} if pairs else {}}
    raise TypeError(f"Invalid type {type(value)} of value {value}")


def int64(value: int) -> str:
    """A signed 64-bit integer, a string in proto3 JSON lest a reader round it to a double."""
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise ValueError(f"Value out of range: {value}")
    return str(int(value))


def double(value: float) -> float | str:
    """msgspec writes NaN and the infinities as ``null``; proto3 JSON spells them out."""
    value = float(value)
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def trace_id(value: int) -> str:
    return f"{value:032x}"


def span_id(value: int) -> str:
    return f"{value:016x}"
