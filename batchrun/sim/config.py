"""The simulator's knobs: timing, text and the faults it injects. Pure data, no server code.

A job file may carry a ``sim:`` section with these keys; it is used when
``endpoint.base_url`` is ``sim``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Fault", "FaultKind", "SimConfig"]

FaultKind = Literal[
    "overloaded",  # HTTP 529 overloaded_error before the stream
    "overloaded_midstream",  # HTTP 200, some deltas, then `event: error` overloaded_error
    "rate_limited",  # HTTP 429 rate_limit_error with retry-after
    "spend_limit",  # HTTP 429 without retry-after, the spend limit message (fatal)
    "server_error",  # HTTP 500 api_error
    "bad_gateway",  # HTTP 502 with an HTML body (a proxy)
    "timeout_error",  # HTTP 504 timeout_error
    "conflict",  # HTTP 409 conflict_error
    "invalid_request",  # HTTP 400 invalid_request_error
    "too_large",  # HTTP 413 request_too_large
    "unauthorized",  # HTTP 401 authentication_error
    "forbidden",  # HTTP 403 permission_error
    "billing",  # HTTP 402 billing_error
    "not_found",  # HTTP 404 not_found_error naming the model
    "disconnect",  # the connection closes before any response
    "disconnect_midstream",  # HTTP 200, some deltas, then the connection closes
    "stall",  # the response headers never come (for stall_s)
    "stall_midstream",  # HTTP 200, some deltas, then silence (for stall_s)
    "malformed",  # HTTP 200, some deltas, then an event whose data is not JSON
    "truncated",  # HTTP 200, the stream ends cleanly but without its final event
]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Fault(_Frozen):
    """One fault rule. A request is faulted by the first rule that selects it.

    A rule selects an attempt when the attempt number (how many times the simulator has seen this
    exact request body, 1-based) is in ``attempts`` (or ``attempts`` is null), the request body
    contains ``match`` (or ``match`` is null), and a draw seeded by (seed, body, attempt) falls
    under ``rate``. Same job, same seed: same faults.
    """

    kind: FaultKind
    rate: float = Field(default=1.0, ge=0.0, le=1.0)
    attempts: list[int] | None = None
    match: str | None = None
    retry_after_s: float | None = Field(default=None, ge=0.0)
    after_deltas: int = Field(default=3, ge=0)


class SimConfig(_Frozen):
    """How the simulator behaves. Text is deterministic: a function of seed and request body."""

    seed: int = 0
    ttft_s: float = Field(default=0.2, ge=0.0)
    token_interval_s: float = Field(default=0.01, ge=0.0)
    min_output_tokens: int = Field(default=8, ge=1)
    max_output_tokens: int = Field(default=120, ge=1)
    stall_s: float = Field(default=30.0, ge=0.0)
    api_key: str | None = None  # when set, any other x-api-key gets a 401
    max_tokens_limit: int = Field(
        default=64_000, ge=1
    )  # a larger max_tokens is a 400, as per model
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1)  # a larger body is a 413
    faults: list[Fault] = Field(default_factory=list)
    # The API since 2026. `known`: a model the simulator's table does not know, or knows as
    # retired, answers 404 as on the API; `any` serves every claude-* id (test models too).
    models: Literal["any", "known"] = "any"
    # Thinking, when a request turns it on: its length in tokens (scaled by effort, capped by
    # budget_tokens); redacted_thinking adds a redacted_thinking block after the thinking one.
    min_thinking_tokens: int = Field(default=16, ge=1)
    max_thinking_tokens: int = Field(default=64, ge=1)
    redacted_thinking: bool = False
    # With tool_choice auto (or none given) and tools, the share of replies that call a tool.
    tool_use_rate: float = Field(default=0.5, ge=0.0, le=1.0)
    # Server-side rate limits (null: unlimited), enforced with 429 + retry-after and reported in
    # the anthropic-ratelimit-* headers. As on the API they apply to each model separately: every
    # model has its own buckets of these sizes. Buckets hold rate_limit_burst_s seconds of their
    # rate (the API's hold a full minute) and refill continuously.
    requests_per_minute: int | None = Field(default=None, gt=0)
    input_tokens_per_minute: int | None = Field(default=None, gt=0)
    output_tokens_per_minute: int | None = Field(default=None, gt=0)
    rate_limit_burst_s: float = Field(default=60.0, gt=0)
    # Message Batches: a batch ends batch_processing_s after it is created, its requests
    # finishing evenly over that time (so a cancel leaves some succeeded, the rest canceled).
    # Each request meets the `faults` rules as if it were sent alone, without a stream: a fault
    # makes it an `errored` result of that error type (`attempts` counts its submissions).
    # Requests whose params contain batch_expire_match expire unprocessed. A batch may hold at
    # most batch_max_requests requests and batch_max_bytes of JSON body (a 400 or 413 if not).
    batch_processing_s: float = Field(default=0.0, ge=0.0)
    batch_expire_match: str | None = None
    batch_max_requests: int = Field(default=100_000, ge=1)
    batch_max_bytes: int = Field(default=256_000_000, ge=1)
