"""Stage 2's gate: requests- and tokens-per-minute budgets, learned from the server and shared.

Every attempt (retries too) waits in ``Budget.acquire`` and reports back through
``Budget.settle``. Modules: ``budget`` (the seam: protocol, reservation, refusal), ``rate`` (the
rate-limited budget: run-wide slots, routing by model), ``model`` (one model's buckets, lessons
and 429 pause), ``bucket`` (token-bucket arithmetic), ``fit`` (a request that can never fit, an
attempt that used nothing), ``headers`` (rate-limit headers), ``adaptive`` (AIMD concurrency on
the overload rate), ``store``, ``sqlite`` and ``redis`` (where buckets live). This package must
not speak HTTP, retry, or write results.

Per model, as the API's limits are: each model a run sends has its own buckets (the job's
configured limits apply to each), its own learned limits and its own 429 pause; concurrency is
the run's. Sharing: with ``limits.shared: true`` (the default) every batchrun process on the host
that uses the same API key, base URL and model takes from one set of buckets and honours one 429
pause, kept in ``<state_dir>/budget-<scope>.sqlite3`` (``state_dir`` defaults to
``$XDG_STATE_HOME/batchrun`` or ``~/.local/state/batchrun``; the scope is a hash of key, base URL
and model, never the key: :func:`shared_scope`). With ``limits.redis_url`` as well, every host
that uses that Redis shares them instead (``redis``: :class:`RedisStore`, timed by the Redis
server's clock). When a shared store cannot be used (a read-only disk, an unreachable server) the
budget logs ``batchrun.limits.shared_unavailable`` and goes on in the process. ``shared: false``
keeps the buckets in the process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from batchrun.clock import Sleep
from batchrun.job.sections import LimitsConfig
from batchrun.schedule.limits.bucket import BURST_S, Adjust, BucketSpec, Want
from batchrun.schedule.limits.budget import (
    Budget,
    BudgetWaitError,
    RequestTooLargeError,
    Reservation,
    Snapshot,
    Unlimited,
)
from batchrun.schedule.limits.model import ModelBudget
from batchrun.schedule.limits.rate import CountTokens, RateBudget, RequestCost, StoreFor
from batchrun.schedule.limits.sqlite import SqliteStore, default_state_dir, state_path
from batchrun.schedule.limits.store import (
    BudgetStore,
    MemoryStore,
    StoreUnavailable,
    shared_scope,
)

__all__ = [
    "BURST_S",
    "Adjust",
    "BucketSpec",
    "Budget",
    "BudgetStore",
    "BudgetWaitError",
    "CountTokens",
    "MemoryStore",
    "ModelBudget",
    "RateBudget",
    "RequestCost",
    "RequestTooLargeError",
    "Reservation",
    "Snapshot",
    "SqliteStore",
    "StoreFor",
    "StoreUnavailable",
    "Unlimited",
    "Want",
    "default_state_dir",
    "make_budget",
    "shared_scope",
    "state_path",
]


def make_budget(
    limits: LimitsConfig,
    *,
    key_fingerprint: str,
    cost: RequestCost,
    max_concurrency: int,
    clock: Callable[[], float] = time.monotonic,
    sleep: Sleep = asyncio.sleep,
    max_wait_s: float | None = None,
    count_tokens: CountTokens | None = None,
) -> RateBudget:
    """The budget of a run: buckets per model, each shared as ``limits`` says.

    ``key_fingerprint`` names the shared state (``sha256(api_key + "\\n" + base_url)``, never the
    key); each model's is :func:`shared_scope` of it and the model's id. ``cost`` estimates a
    body's tokens (the job's API). ``max_wait_s`` bounds a wait for a 429's pause (pass
    ``retry.max_backoff_s``). ``count_tokens`` posts a body to the API's token counting endpoint
    and returns its ``input_tokens``; it is used only with ``limits.exact_input_tokens`` and an
    input limit in force. With no limit set, nothing waits until a response teaches one.
    ``clock`` must be the same in every process sharing the state: keep ``time.monotonic``
    outside tests. Every wait the budget does goes through ``sleep`` (pass the run's).
    """

    def in_memory(model: str) -> BudgetStore:
        return MemoryStore(clock)

    def on_disk(model: str) -> BudgetStore:
        path = state_path(limits.state_dir, shared_scope(key_fingerprint, model))
        return SqliteStore(path, clock=clock)

    store: StoreFor = on_disk if limits.shared else in_memory
    if limits.shared and limits.redis_url:
        from batchrun.schedule.limits.redis import (
            RedisStore,  # redis-py takes ~200 ms and 17 MB to load: only when asked for
        )

        url = limits.redis_url

        def in_redis(model: str) -> BudgetStore:
            return RedisStore(url, shared_scope(key_fingerprint, model))

        store = in_redis
    return RateBudget(
        {
            "requests": limits.requests_per_minute,
            "input_tokens": limits.input_tokens_per_minute,
            "output_tokens": limits.output_tokens_per_minute,
        },
        store,
        cost=cost,
        max_concurrency=max_concurrency,
        clock=clock,
        sleep=sleep,
        max_wait_s=max_wait_s,
        count_tokens=count_tokens if limits.exact_input_tokens else None,
    )
