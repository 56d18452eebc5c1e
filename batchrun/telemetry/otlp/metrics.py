"""Metrics as OTLP JSON, field for field what the OTLP exporters' ``encode_metrics`` builds.

Turns the SDK's collected metrics (sums, gauges, histograms, exponential histograms, with their
exemplars) into the ``resourceMetrics`` of an export request, as plain dicts (see
:mod:`batchrun.otlpjson` for how each field is spelled). Pure: it must not write files, choose
exporters or import the protobuf modules.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.metrics.export import ExponentialHistogram, Gauge, Histogram, Sum

from batchrun.telemetry.otlp import encode as otlpjson
from batchrun.telemetry.otlp.encode import Json

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import Exemplar
    from opentelemetry.sdk.metrics.export import (
        AggregationTemporality,
        Buckets,
        ExponentialHistogramDataPoint,
        HistogramDataPoint,
        Metric,
        MetricsData,
        NumberDataPoint,
        ResourceMetrics,
        ScopeMetrics,
    )
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

__all__ = ["resource_metrics"]

_logger = logging.getLogger(__name__)


def resource_metrics(data: MetricsData) -> list[Json]:
    """One entry per resource; a resource met twice keeps its first place and its last scopes,
    as in ``encode_metrics``. The SDK has already grouped the metrics by scope."""
    grouped: dict[Resource, ResourceMetrics] = {}
    for one in data.resource_metrics:
        grouped[one.resource] = one
    return [
        otlpjson.with_schema_url(
            {
                "resource": otlpjson.resource(resource),
                "scopeMetrics": _scope_metrics(one.scope_metrics),
            },
            resource.schema_url,
        )
        for resource, one in grouped.items()
    ]


def _scope_metrics(scope_metrics: Sequence[ScopeMetrics]) -> list[Json]:
    grouped: dict[InstrumentationScope, ScopeMetrics] = {}
    for one in scope_metrics:
        grouped[one.scope] = one
    out = []
    for scope, one in grouped.items():
        encoded: Json = {"scope": otlpjson.scope(scope)}
        if one.metrics:
            encoded["metrics"] = [_metric(metric) for metric in one.metrics]
        out.append(otlpjson.with_schema_url(encoded, scope.schema_url))
    return out


def _metric(metric: Metric) -> Json:
    """A metric without data points has no data field at all, as ``encode_metrics`` only
    touches it while adding points."""
    out: Json = {"name": metric.name} if metric.name else {}
    if metric.description:
        out["description"] = metric.description
    if metric.unit:
        out["unit"] = metric.unit
    data = metric.data
    if not data.data_points:
        return out
    if isinstance(data, Gauge):
        out["gauge"] = {"dataPoints": [_number_point(p, start=False) for p in data.data_points]}
    elif isinstance(data, Histogram):
        out["histogram"] = _with_temporality(
            {"dataPoints": [_histogram_point(p) for p in data.data_points]},
            data.aggregation_temporality,
        )
    elif isinstance(data, Sum):
        out["sum"] = _with_temporality(
            {"dataPoints": [_number_point(p, start=True) for p in data.data_points]},
            data.aggregation_temporality,
        )
        if data.is_monotonic:
            out["sum"]["isMonotonic"] = True
    elif isinstance(data, ExponentialHistogram):
        out["exponentialHistogram"] = _with_temporality(
            {"dataPoints": [_exponential_point(p) for p in data.data_points]},
            data.aggregation_temporality,
        )
    else:
        _logger.warning("unsupported data type %s", type(data).__name__)
    return out


def _with_temporality(out: Json, temporality: AggregationTemporality) -> Json:
    if temporality.value:
        out["aggregationTemporality"] = temporality.value
    return out


def _number_point(point: NumberDataPoint, *, start: bool) -> Json:
    """A gauge's points carry no start time: ``encode_metrics`` leaves it out."""
    out = _point_base(
        point.attributes, point.start_time_unix_nano if start else 0, point.time_unix_nano
    )
    value = point.value
    if isinstance(value, int):
        out["asInt"] = otlpjson.int64(value)
    else:
        out["asDouble"] = otlpjson.double(value)
    return _with_exemplars(out, point.exemplars)


def _histogram_point(point: HistogramDataPoint) -> Json:
    out = _point_base(point.attributes, point.start_time_unix_nano, point.time_unix_nano)
    _add_count_and_sum(out, point.count, point.sum)
    if point.bucket_counts:
        out["bucketCounts"] = [str(n) for n in point.bucket_counts]
    if point.explicit_bounds:
        out["explicitBounds"] = [otlpjson.double(b) for b in point.explicit_bounds]
    _add_min_max(out, point.min, point.max)
    return _with_exemplars(out, point.exemplars)


def _exponential_point(point: ExponentialHistogramDataPoint) -> Json:
    """Buckets only on the sides that have counts; no zero threshold: the encoder sets none."""
    out = _point_base(point.attributes, point.start_time_unix_nano, point.time_unix_nano)
    _add_count_and_sum(out, point.count, point.sum)
    if point.scale:
        out["scale"] = point.scale
    if point.zero_count:
        out["zeroCount"] = str(point.zero_count)
    if point.positive.bucket_counts:
        out["positive"] = _buckets(point.positive)
    if point.negative.bucket_counts:
        out["negative"] = _buckets(point.negative)
    if point.flags:
        out["flags"] = point.flags
    _add_min_max(out, point.min, point.max)
    return _with_exemplars(out, point.exemplars)


def _point_base(attributes: Mapping[str, Any] | None, start: int, time: int) -> Json:
    """What every kind of data point begins with."""
    out: Json = {"attributes": otlpjson.attributes(attributes)} if attributes else {}
    if start:
        out["startTimeUnixNano"] = str(start)
    if time:
        out["timeUnixNano"] = str(time)
    return out


def _add_count_and_sum(out: Json, count: int, total: float | None) -> None:
    """The sum is an ``optional`` field: written whenever the SDK gives one, even 0."""
    if count:
        out["count"] = str(count)
    if total is not None:
        out["sum"] = otlpjson.double(total)


def _add_min_max(out: Json, low: float | None, high: float | None) -> None:
    """``optional`` fields too, and the SDK's are infinite when it kept none."""
    if low is not None:
        out["min"] = otlpjson.double(low)
    if high is not None:
        out["max"] = otlpjson.double(high)


def _buckets(buckets: Buckets) -> Json:
    out: Json = {"offset": buckets.offset} if buckets.offset else {}
    out["bucketCounts"] = [str(n) for n in buckets.bucket_counts]
    return out


def _with_exemplars(out: Json, exemplars: Sequence[Exemplar]) -> Json:
    if exemplars:
        out["exemplars"] = [_exemplar(exemplar) for exemplar in exemplars]
    return out


def _exemplar(exemplar: Exemplar) -> Json:
    """Span and trace ids only when it has both, as ``_encode_exemplars`` writes them."""
    out: Json = {}
    if exemplar.filtered_attributes:
        out["filteredAttributes"] = otlpjson.attributes(exemplar.filtered_attributes)
    if exemplar.time_unix_nano:
        out["timeUnixNano"] = str(exemplar.time_unix_nano)
    value = exemplar.value
    if isinstance(value, float):
        out["asDouble"] = otlpjson.double(value)
    elif isinstance(value, int):
        out["asInt"] = otlpjson.int64(value)
    else:
        raise ValueError("Exemplar value must be an int or float")
    if exemplar.span_id is not None and exemplar.trace_id is not None:
        out["spanId"] = otlpjson.span_id(exemplar.span_id)
        out["traceId"] = otlpjson.trace_id(exemplar.trace_id)
    return out
