"""Simulator: the API's HTTP shapes. Ids, error bodies, faults answered before any stream, headers.

Builds ``aiohttp`` responses but never sends them and never sleeps. Rate limits come through a
:class:`RateLimits` seam: :class:`StaticLimits` admits everything and sends no limit
headers; :class:`~batchrun.sim.ratelimit.ServerLimiter` enforces the configured limits.
It must not validate requests, pick faults or stream events.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Protocol

from aiohttp import web

from batchrun.sim.config import SimConfig
from batchrun.sim.ratelimit import Admission, ServerLimiter

__all__ = [
    "HTTP_FAULTS",
    "RateLimits",
    "StaticLimits",
    "error_body",
    "error_response",
    "fault_response",
    "make_id",
    "make_limits",
    "rate_limit_response",
]

_B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

# kind -> (status, error type, message); "{model}" is filled in.
HTTP_FAULTS: dict[str, tuple[int, str, str]] = {
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "rate_limited": (
        429,
        "rate_limit_error",
        "This request would exceed the rate limit for your organization of 4,000 requests per "
        "minute. For details, refer to: https://docs.claude.com/en/api/rate-limits.",
    ),
    "server_error": (500, "api_error", "Internal server error"),
    "timeout_error": (504, "timeout_error", "Request timed out"),
    "conflict": (409, "conflict_error", "Conflict: the request conflicts with another request"),
    "invalid_request": (400, "invalid_request_error", "Invalid request (simulated fault)"),
    "too_large": (413, "request_too_large", "Request exceeds the maximum allowed number of bytes."),
    "unauthorized": (401, "authentication_error", "invalid x-api-key"),
    "forbidden": (
        403,
        "permission_error",
        "Your API key does not have permission to use the specified resource.",
    ),
    "billing": (
        402,
        "billing_error",
        "Your credit balance is too low to access the Anthropic API. Please go to Plans & "
        "Billing to upgrade or purchase credits.",
    ),
    "not_found": (404, "not_found_error", "model: {model}"),
}

_BAD_GATEWAY_HTML = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    "</body>\r\n</html>\r\n"
)


def make_id(prefix: str, *parts: bytes | str | int) -> str:
    """A deterministic id in the API's style (``msg_01...``, ``req_011C...``) from ``parts``."""
    data = b"\0".join(p if isinstance(p, bytes) else str(p).encode() for p in parts)
    number = int.from_bytes(hashlib.sha256(data).digest())
    lead, size = ("011C", 20) if prefix == "req_" else ("01", 22)
    chars = []
    for _ in range(size):
        number, rest = divmod(number, 62)
        chars.append(_B62[rest])
    return prefix + lead + "".join(chars)


class RateLimits(Protocol):
    """The seam for rate limiting: a decision per request, headers for every response; both
    of the request's model, as the API limits each model separately."""

    def admit(self, *, model: str, input_tokens: int, max_tokens: int) -> Admission: ...

    def finish(self, admission: Admission) -> None: ...

    def refusal_message(self, admission: Admission) -> str: ...

    def headers(self, model: str, *, exhausted: bool = False) -> dict[str, str]: ...


def make_limits(config: SimConfig) -> RateLimits:
    """A :class:`ServerLimiter` when ``config`` sets any limit, else :class:`StaticLimits`."""
    limits = (
        config.requests_per_minute,
        config.input_tokens_per_minute,
        config.output_tokens_per_minute,
    )
    if all(v is None for v in limits):
        return StaticLimits()
    return ServerLimiter(
        requests_per_minute=config.requests_per_minute,
        input_tokens_per_minute=config.input_tokens_per_minute,
        output_tokens_per_minute=config.output_tokens_per_minute,
        burst_s=config.rate_limit_burst_s,
    )


class StaticLimits:
    """A simulator with no limits configured: it admits everything and, like an endpoint
    without limits, sends no ``anthropic-ratelimit-*`` headers, so that a client shows no limit
    it never met (set ``sim.*_per_minute`` to simulate real ones)."""

    def admit(self, *, model: str, input_tokens: int, max_tokens: int) -> Admission:
        return Admission(model=model)

    def finish(self, admission: Admission) -> None:
        return None

    def refusal_message(self, admission: Admission) -> str:
        return HTTP_FAULTS["rate_limited"][2]

    def headers(self, model: str, *, exhausted: bool = False) -> dict[str, str]:
        return {}


def error_body(error_type: str, message: str, request_id: str | None = None) -> dict[str, object]:
    """The API's error JSON; ``request_id`` is omitted where the API omits it (stream events)."""
    body: dict[str, object] = {"type": "error", "error": {"type": error_type, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return body


def error_response(
    status: int,
    error_type: str,
    message: str,
    request_id: str,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """An HTTP error answer with the API's body and a ``request-id`` header."""
    return web.Response(
        status=status,
        text=json.dumps(error_body(error_type, message, request_id)),
        content_type="application/json",
        headers={"request-id": request_id, **(headers or {})},
    )


def rate_limit_response(limits: RateLimits, admission: Admission, request_id: str) -> web.Response:
    """The 429 a refused request gets: the API's body, ``retry-after`` and the limit headers."""
    headers = {"retry-after": str(admission.retry_after_s or 1), **limits.headers(admission.model)}
    return error_response(
        429, "rate_limit_error", limits.refusal_message(admission), request_id, headers
    )


def _spend_limit_message() -> str:
    now = datetime.now(UTC)
    first_of_next = (now.replace(day=1) + timedelta(days=32)).replace(day=1)
    return (
        "You have reached your specified API usage limits. You will regain access on "
        f"{first_of_next:%Y-%m-%d} at 00:00 UTC."
    )


def fault_response(
    kind: str,
    *,
    model: str,
    request_id: str,
    limits: RateLimits,
    retry_after_s: float | None = None,
) -> web.Response:
    """The answer to an attempt faulted before any stream: a kind of ``HTTP_FAULTS``,
    ``bad_gateway`` or ``spend_limit``."""
    if kind == "bad_gateway":
        return web.Response(
            status=502,
            text=_BAD_GATEWAY_HTML,
            content_type="text/html",
            headers={"request-id": request_id},
        )
    if kind == "spend_limit":
        return error_response(429, "rate_limit_error", _spend_limit_message(), request_id)
    status, error_type, message = HTTP_FAULTS[kind]
    headers: dict[str, str] = {}
    if kind == "rate_limited":
        retry_after = retry_after_s if retry_after_s is not None else 1.0
        headers = {"retry-after": f"{retry_after:g}", **limits.headers(model, exhausted=True)}
    return error_response(status, error_type, message.format(model=model), request_id, headers)
