"""The exception tree and the exit codes: every error batchrun raises on purpose, in one place.

::

    BatchrunError
    ├── JobError              the job file or its input is invalid; nothing is sent (exit 2)
    ├── RunLockedError        another run holds the run folder (exit 75)
    └── AttemptError          one attempt failed: its classification, as the server said it
        ├── RetryableError    worth another attempt (overload, 429, 5xx, network, timeouts,
        │                     truncated or malformed streams); may carry ``retry_after``
        ├── PermanentError    this request will never succeed (400, 413, ...); an ``error`` row
        └── FatalAPIError     no request can succeed (bad key, no permission, unknown model,
                              spending limit): the run aborts (exit 3)

Foreign exceptions (httpx, json, polars, yaml) are translated once, where they enter, with
``raise ... from exc``; which API error is which is the API's own table
(:mod:`batchrun.apis.anthropic`). Deciding whether to retry is an ``isinstance`` check on this
tree. Per-request failures become data (an ``error`` row); only job-level problems end a run.
An error carries its classification only; what an attempt measured is on its
:class:`~batchrun.models.Attempt`.

The exit codes of CONTRACT.md:

====  =====================================================================================
0     every row ``ok``
1     the run finished; some rows ended in ``error``
2     the job file or its input is invalid; nothing was sent
3     aborted by an error no retry can fix; rows done so far are kept
75    another run holds the run folder (``EX_TEMPFAIL``); nothing was sent
130   interrupted by SIGINT (143: SIGTERM); everything finished is on disk
====  =====================================================================================
"""

from __future__ import annotations

import signal

__all__ = [
    "EXIT_FATAL",
    "EXIT_INVALID",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_ROW_ERRORS",
    "SIGNAL_EXIT",
    "AttemptError",
    "BatchrunError",
    "FatalAPIError",
    "JobError",
    "PermanentError",
    "RetryableError",
    "RunLockedError",
]

EXIT_OK, EXIT_ROW_ERRORS, EXIT_INVALID, EXIT_FATAL = 0, 1, 2, 3
EXIT_LOCKED = 75  # EX_TEMPFAIL: another run holds the run folder; try again later
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


class BatchrunError(Exception):
    """Base of every error batchrun raises on purpose."""


class JobError(BatchrunError):
    """The job file or its input is invalid. The message names the file, key or row."""


class RunLockedError(BatchrunError):
    """Another batchrun process is running on the same run folder."""


class AttemptError(BatchrunError):
    """One attempt at a request failed.

    ``error_type`` is the API's error type (``overloaded_error``, ``rate_limit_error``, ...) or the
    client's own (``timeout``, ``connection_error``, ``stream_error``); ``http_status`` the
    response's, when there was one; ``retry_after`` the wait the server asked for, in seconds.
    """

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        http_status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.http_status = http_status
        self.retry_after = retry_after

    def __str__(self) -> str:
        status = f"HTTP {self.http_status} " if self.http_status is not None else ""
        return f"{status}{self.error_type}: {self.message}"


class RetryableError(AttemptError):
    """A transient failure: the same request may succeed if sent again."""


class PermanentError(AttemptError):
    """This request is wrong and will fail however often it is sent (400, 413, ...)."""


class FatalAPIError(AttemptError):
    """Every request of the run will fail the same way: the run must stop (exit 3)."""
