"""The exception tree: every error batchrun raises on purpose, in one place.

::

    BatchrunError
    ├── JobError              the job file or its input is invalid; nothing is sent (exit 2)
    ├── RunLockedError        another run holds the run folder
    └── AttemptError          one streamed attempt failed; carries what the server said
        ├── RetryableError    worth another attempt (overload, 429, 5xx, network, timeouts,
        │                     truncated or malformed streams); may carry ``retry_after``
        ├── PermanentError    this request will never succeed (400, 413, ...); an ``error`` row
        └── FatalAPIError     no request can succeed (bad key, no permission, unknown model,
                              spending limit): the run aborts (exit 3)

Foreign exceptions (httpx, json, polars, yaml) are translated once, where they enter, with
``raise ... from exc``. Deciding whether to retry is an ``isinstance`` check on this tree.
Per-request failures become data (an ``error`` row); only job-level problems end a run.
"""

from __future__ import annotations

import re

__all__ = [
    "AttemptError",
    "BatchrunError",
    "FatalAPIError",
    "JobError",
    "PermanentError",
    "RetryableError",
    "RunLockedError",
    "api_error",
]


class BatchrunError(Exception):
    """Base of every error batchrun raises on purpose."""


class JobError(BatchrunError):
    """The job file or its input is invalid. The message names the file, key or row."""


class RunLockedError(BatchrunError):
    """Another batchrun process is running on the same run folder."""


class AttemptError(BatchrunError):
    """One attempt at a request failed.

    ``error_type`` is the API's error type (``overloaded_error``, ``rate_limit_error``, ...) or the
    client's own (``timeout``, ``connection_error``, ``stream_error``). ``output_tokens_seen``
    counts what arrived before the failure, for the attempts table.
    """

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        http_status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.http_status = http_status
        self.request_id = request_id
        self.retry_after = retry_after
        self.output_tokens_seen: int | None = None
        self.ttft_s: float | None = None

    def __str__(self) -> str:
        status = f"HTTP {self.http_status} " if self.http_status is not None else ""
        return f"{status}{self.error_type}: {self.message}"


class RetryableError(AttemptError):
    """A transient failure: the same request may succeed if sent again."""


class PermanentError(AttemptError):
    """This request is wrong and will fail however often it is sent (400, 413, ...)."""


class FatalAPIError(AttemptError):
    """Every request of the run will fail the same way: the run must stop (exit 3)."""


_FATAL_TYPES = {"authentication_error", "permission_error", "billing_error"}
_RETRYABLE_TYPES = {
    "overloaded_error",
    "api_error",
    "rate_limit_error",
    "timeout_error",
    "conflict_error",
}
_SPEND_LIMIT = re.compile(r"spend|usage limit|credit balance|billing", re.IGNORECASE)


def api_error(
    error_type: str,
    message: str,
    *,
    http_status: int | None = None,
    request_id: str | None = None,
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
    return cls(
        error_type,
        message,
        http_status=http_status,
        request_id=request_id,
        retry_after=retry_after,
    )
