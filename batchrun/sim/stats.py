"""Simulator: what the server did, counted for tests and benchmarks. Thread-safe.

The server's event loop writes; tests and benchmarks read from other threads, so every access
takes the lock and readers get copies. It must not influence the server's behaviour.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from dataclasses import dataclass

__all__ = ["SimStats", "StreamTiming"]


@dataclass(frozen=True, slots=True)
class StreamTiming:
    """When a stream's request arrived and its first content was written (``perf_counter()``)."""

    request_id: str
    received: float
    first_content: float


class SimStats:
    """Counters of requests, statuses, faults and finished streams, plus recent stream timings."""

    def __init__(self, max_timings: int = 100_000) -> None:
        self._lock = threading.Lock()
        self._by_path: Counter[str] = Counter()
        self._by_status: Counter[int] = Counter()
        self._faults: Counter[str] = Counter()
        self._completed = 0
        self._repeats = 0
        self._timings: deque[StreamTiming] = deque(maxlen=max_timings)

    def record_request(self, path: str) -> None:
        with self._lock:
            self._by_path[path] += 1

    def record_status(self, status: int) -> None:
        with self._lock:
            self._by_status[status] += 1

    def record_fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def record_sighting(self, attempt: int) -> None:
        """A request arrived; ``attempt`` > 1 means this exact body was seen before."""
        if attempt > 1:
            with self._lock:
                self._repeats += 1

    def record_completed(self) -> None:
        with self._lock:
            self._completed += 1

    def record_first_content(self, request_id: str, received: float, at: float) -> None:
        with self._lock:
            self._timings.append(StreamTiming(request_id, received, at))

    @property
    def requests_by_path(self) -> dict[str, int]:
        with self._lock:
            return dict(self._by_path)

    @property
    def requests_by_status(self) -> dict[int, int]:
        with self._lock:
            return dict(self._by_status)

    @property
    def faults_by_kind(self) -> dict[str, int]:
        with self._lock:
            return dict(self._faults)

    @property
    def repeated_requests(self) -> int:
        """Requests whose exact body (on the same path) the server had seen before."""
        with self._lock:
            return self._repeats

    @property
    def streams_completed(self) -> int:
        with self._lock:
            return self._completed

    @property
    def total_requests(self) -> int:
        with self._lock:
            return sum(self._by_path.values())

    def timings(self) -> list[StreamTiming]:
        """The most recent streams' timings (oldest first), at most ``max_timings`` of them."""
        with self._lock:
            return list(self._timings)

    def first_content_at(self) -> dict[str, float]:
        """``perf_counter()`` of each recent stream's first content event, by request id."""
        with self._lock:
            return {t.request_id: t.first_content for t in self._timings}
