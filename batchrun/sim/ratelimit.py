"""Simulator: server-side rate limits, as the API enforces them. Decisions and headers only.

Token buckets that refill continuously (the API's model): ``requests``, ``input-tokens`` and
``output-tokens`` per minute, each holding ``burst_s`` seconds of its rate (the API: a full
minute) and starting full. As on the API, each model has its own buckets (the configured limits
apply to each; an alias or dated snapshot is the model it names), so requests to one model never
spend another's, and a response's headers are its model's. A request is admitted when every
bucket holds what it needs (a need above a bucket's capacity waits for a full bucket); admitted,
it is charged one request, its input tokens and its ``max_tokens`` of output, and given back the
output it did not write when it ends. Refused, it is charged nothing and told ``retry-after``:
the whole seconds until it would be admitted. Headers report limit, remaining (tokens rounded
down to thousands, as the API does) and the RFC 3339 time each bucket is full again.

It must not build HTTP responses (``responses`` does) nor read requests (``validate`` does).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from batchrun.sim.models import lookup

__all__ = ["Admission", "ServerLimiter"]

_KINDS = ("requests", "input-tokens", "output-tokens")
_NAMES = {"requests": "requests", "input-tokens": "input tokens", "output-tokens": "output tokens"}


@dataclass(slots=True)
class Admission:
    """The limiter's answer to one request. ``output_tokens`` is filled in by the server with
    what the reply wrote, so that :meth:`ServerLimiter.finish` can give back the rest."""

    model: str = ""
    ok: bool = True
    retry_after_s: int | None = None
    kind: str | None = None  # the bucket that refused
    limit: int | None = None
    reserved_output: int = 0
    output_tokens: int = 0
    finished: bool = False


class _Bucket:
    def __init__(self, limit: int, burst_s: float, now: float) -> None:
        self.limit = limit
        self.rate = limit / 60.0
        self.capacity = self.rate * burst_s
        self.level = self.capacity
        self.updated = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + max(0.0, now - self.updated) * self.rate)
        self.updated = max(self.updated, now)

    def wait_for(self, amount: int) -> float:
        short = min(amount, self.capacity) - self.level
        return short / self.rate if short > 1e-9 else 0.0


class ServerLimiter:
    """Requests and tokens per minute for each model (of one key, one organisation).

    ``None`` leaves a kind unlimited (and out of the headers). ``clock`` times the buckets;
    ``wall`` (seconds since the epoch) dates the reset headers.
    """

    def __init__(
        self,
        *,
        requests_per_minute: int | None = None,
        input_tokens_per_minute: int | None = None,
        output_tokens_per_minute: int | None = None,
        burst_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._burst_s = burst_s
        limits = dict(
            zip(
                _KINDS,
                (requests_per_minute, input_tokens_per_minute, output_tokens_per_minute),
                strict=True,
            )
        )
        self._limits = {k: v for k, v in limits.items() if v is not None}
        self._by_name: dict[str, dict[str, _Bucket]] = {}  # as requests name the model
        self._by_id: dict[str, dict[str, _Bucket]] = {}  # one set per model

    def _buckets(self, model: str) -> dict[str, _Bucket]:
        """The model's buckets, full when the model is first asked for."""
        found = self._by_name.get(model)
        if found is None:
            spec = lookup(model)
            key = spec.id if spec is not None else model
            found = self._by_id.get(key)
            if found is None:
                now = self._clock()
                found = {k: _Bucket(v, self._burst_s, now) for k, v in self._limits.items()}
                self._by_id[key] = found
            self._by_name[model] = found
        return found

    def admit(self, *, model: str, input_tokens: int, max_tokens: int) -> Admission:
        """Admit and charge a request to ``model``'s buckets, or refuse it with the seconds to
        wait."""
        now = self._clock()
        buckets = self._buckets(model)
        needs = {"requests": 1, "input-tokens": input_tokens, "output-tokens": max_tokens}
        worst, worst_kind = 0.0, None
        for kind, bucket in buckets.items():
            bucket.refill(now)
            wait = bucket.wait_for(needs[kind])
            if wait > worst:
                worst, worst_kind = wait, kind
        if worst_kind is not None:
            return Admission(
                model=model,
                ok=False,
                retry_after_s=max(1, math.ceil(worst)),
                kind=worst_kind,
                limit=buckets[worst_kind].limit,
            )
        for kind, bucket in buckets.items():
            bucket.level -= needs[kind]
        return Admission(model=model, reserved_output=max_tokens)

    def finish(self, admission: Admission) -> None:
        """An admitted request ended: give back the output tokens it did not write."""
        if not admission.ok or admission.finished:
            return
        admission.finished = True
        bucket = self._buckets(admission.model).get("output-tokens")
        if bucket is not None:
            bucket.refill(self._clock())
            unused = max(0, admission.reserved_output - admission.output_tokens)
            bucket.level = min(bucket.capacity, bucket.level + unused)

    def refusal_message(self, admission: Admission) -> str:
        """The API's wording of a 429 for ``admission``'s bucket and model."""
        return (
            f"This request would exceed your organization's rate limit of {admission.limit:,} "
            f"{_NAMES.get(admission.kind or '', 'requests')} per minute "
            f"(model: {admission.model}). For details, refer to: "
            "https://docs.claude.com/en/api/rate-limits. You can see the response headers for "
            "current usage."
        )

    def headers(self, model: str, *, exhausted: bool = False) -> dict[str, str]:
        """``anthropic-ratelimit-*`` headers of ``model``'s buckets, plus ``tokens-*`` for the
        stricter of input and output. ``exhausted`` reports nothing left (a faulted 429)."""
        now = self._clock()
        out: dict[str, str] = {}
        fractions: dict[str, float] = {}
        for kind, bucket in self._buckets(model).items():
            bucket.refill(now)
            left = 0.0 if exhausted else max(0.0, bucket.level)
            remaining = int(left) if kind == "requests" else int(left // 1000 * 1000)
            full_in = (bucket.capacity - left) / bucket.rate
            reset = datetime.fromtimestamp(math.ceil(self._wall() + full_in), UTC)
            out[f"anthropic-ratelimit-{kind}-limit"] = str(bucket.limit)
            out[f"anthropic-ratelimit-{kind}-remaining"] = str(remaining)
            out[f"anthropic-ratelimit-{kind}-reset"] = reset.strftime("%Y-%m-%dT%H:%M:%SZ")
            if kind != "requests":
                fractions[kind] = left / bucket.capacity
        if fractions:
            stricter = min(fractions, key=lambda k: fractions[k])
            for part in ("limit", "remaining", "reset"):
                out[f"anthropic-ratelimit-tokens-{part}"] = out[
                    f"anthropic-ratelimit-{stricter}-{part}"
                ]
        return out
