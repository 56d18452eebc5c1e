"""What Anthropic's APIs share: authentication headers, the error table, error bodies, the
headers a response carries for the rate budget.

Part of :mod:`batchrun.apis`: :class:`AnthropicApi` is the base of the Messages and the legacy
Text Completions APIs, which differ only in path, body and stream. Pure code: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from batchrun.errors import AttemptError, FatalAPIError, PermanentError, RetryableError
from batchrun.models import Completion

__all__ = [
    "FIRST_VERSION",
    "LATEST_VERSION",
    "SAMPLING_KEYS",
    "AnthropicApi",
    "classify",
    "classify_event",
]

# anthropic-version values: the first (2023-06-01, the only one of the legacy Text Completions
# API) and the latest, on which temperature, top_p and top_k are gone: sending any is a 400.
FIRST_VERSION, LATEST_VERSION = "2023-06-01", "2026-10-21"

_FATAL_TYPES = {"authentication_error", "permission_error", "billing_error"}
_RETRYABLE_TYPES = {
    "overloaded_error",
    "api_error",
    "rate_limit_error",
    "timeout_error",
    "conflict_error",
}
# Types that mean "this request is wrong", in a stream too; any other error event is retried.
_PERMANENT_TYPES = {"invalid_request_error", "request_too_large", "not_found_error"}
_SPEND_LIMIT = re.compile(r"spend|usage limit|credit balance|billing", re.IGNORECASE)
_RATELIMIT_PREFIX = "anthropic-ratelimit-"
# The request keys both APIs take (the legacy one sends max_tokens as max_tokens_to_sample).
SAMPLING_KEYS = frozenset(
    {"model", "max_tokens", "temperature", "top_p", "top_k", "stop_sequences"}
)
_RETRY_AFTER = ("retry-after", "retry-after-ms")


def classify(
    error_type: str,
    message: str,
    *,
    http_status: int | None = None,
    retry_after: float | None = None,
    should_retry: bool | None = None,
) -> AttemptError:
    """Classify an error the API sent, as an HTTP response or an ``error`` event in a stream.

    Follows PROTOCOL.md's table: 401/402/403, an unknown model and a spending-limit 429 are fatal
    for the run; 408/409/429/5xx and overload are retryable; the rest (400, 413, ...) are
    permanent. An ``x-should-retry`` header, when the server sends one, overrides the table for
    everything but the fatal cases.
    """
    fatal = (
        http_status in (401, 402, 403)
        or error_type in _FATAL_TYPES
        or (error_type == "not_found_error" and "model" in message.lower())
        or (
            (http_status == 429 or error_type == "rate_limit_error")
            and retry_after is None
            and _SPEND_LIMIT.search(message) is not None
        )
    )
    retryable = error_type in _RETRYABLE_TYPES or (
        http_status is not None and (http_status in (408, 409, 429) or http_status >= 500)
    )
    if should_retry is not None:
        retryable = should_retry
    cls: type[AttemptError] = (
        FatalAPIError if fatal else RetryableError if retryable else PermanentError
    )
    return cls(error_type, message, http_status=http_status, retry_after=retry_after)


def classify_event(error_type: str, message: str) -> AttemptError:
    """Classify an ``error`` event after HTTP 200: the streaming form of a 529 (PROTOCOL.md), so
    a type this table does not know is retried like overload; fatal and permanent types keep
    their meaning."""
    error = classify(error_type, message)
    if isinstance(error, PermanentError) and error_type not in _PERMANENT_TYPES:
        return RetryableError(error_type, message)
    return error


class AnthropicApi:
    """The parts of the :class:`~batchrun.apis.Api` protocol every Anthropic API shares."""

    provider = "anthropic"
    request_id_header = "request-id"

    @staticmethod
    def headers(api_key: str, version: str, betas: Sequence[str] = ()) -> dict[str, str]:
        """The headers of every request: the key, the API version and any betas."""
        headers = {"x-api-key": api_key, "anthropic-version": version}
        if betas:
            headers["anthropic-beta"] = ",".join(betas)
        return headers

    @staticmethod
    def budget_headers(headers: Mapping[str, str]) -> dict[str, str]:
        """The response headers the rate budget learns from (lower-case names): the
        ``anthropic-ratelimit-*`` family and ``retry-after``."""
        return {
            name: value
            for name, value in headers.items()
            if name.startswith(_RATELIMIT_PREFIX) or name in _RETRY_AFTER
        }

    classify = staticmethod(classify)
    classify_event = staticmethod(classify_event)

    @staticmethod
    def error_body(raw: bytes, status: int, reason: str) -> tuple[str, str]:
        """The API's ``error.type`` and ``error.message``, or a stand-in for a body from a
        proxy (``http_error``, with the body). Not cut here: the caller scrubs secrets out of
        the text first, then caps it."""
        try:
            payload = json.loads(raw)
            error = payload["error"]
            return str(error["type"]), str(error.get("message", ""))
        except (ValueError, KeyError, TypeError, RecursionError):
            text = raw.decode("utf-8", "replace").strip()
            snippet = " ".join(text.split())
            return "http_error", f"HTTP {status} {reason}" + (f": {snippet}" if snippet else "")

    def batch_completion(self, message: Any) -> Completion:
        """A non-streaming answer from a batch; only APIs with ``batchable`` have one."""
        raise NotImplementedError(f"the {self} API has no batch form")
