"""The exception tree and the exit codes: every error batchrun raises on purpose, in one place.

::

    BatchrunError
    ├── JobError              the job file or its input is invalid; nothing is sent (exit 2)
    ├── RunLockedError        another run holds the run folder (exit 75)
    ├── RunFolderError        the run folder could not be written, or holds something batchrun
    │                         did not put there (exit 74)
    ├── EndpointUnreachable   no attempt reached the endpoint for a sustained window (exit 69)
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
4     the spend cap (``limits.max_cost_usd``) stopped the run; rows done are kept
69    the endpoint could not be reached for a sustained period (``EX_UNAVAILABLE``)
74    the run folder could not be written (``EX_IOERR``); what was written is intact
75    another run holds the run folder (``EX_TEMPFAIL``); nothing was sent
130   interrupted by SIGINT (143: SIGTERM); everything finished is on disk
====  =====================================================================================
"""

from __future__ import annotations

import errno
import os
import re
import signal
from pathlib import Path

__all__ = [
    "EXIT_CAPPED",
    "EXIT_FATAL",
    "EXIT_INVALID",
    "EXIT_IOERR",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_ROW_ERRORS",
    "EXIT_UNAVAILABLE",
    "SIGNAL_EXIT",
    "AttemptError",
    "BatchrunError",
    "EndpointUnreachable",
    "FatalAPIError",
    "JobError",
    "JudgingStopped",
    "PermanentError",
    "RetryableError",
    "RunFolderError",
    "RunLockedError",
    "os_error",
]

EXIT_OK, EXIT_ROW_ERRORS, EXIT_INVALID, EXIT_FATAL = 0, 1, 2, 3
EXIT_CAPPED = 4  # the spend cap stopped the run; raise it and run again to go on
EXIT_LOCKED = 75  # EX_TEMPFAIL: another run holds the run folder; try again later
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: the endpoint could not be reached; run again to resume
EXIT_IOERR = 74  # EX_IOERR: the run folder could not be written
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


class BatchrunError(Exception):
    """Base of every error batchrun raises on purpose."""


class JobError(BatchrunError):
    """The job file or its input is invalid. The message names the file, key or row."""


class JudgingStopped(BatchrunError):
    """The judge run stopped as a run stops (cap, abort, signal, endpoint, folder):
    ``exit_code`` is its exit code, for the command scoring to end with."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RunLockedError(BatchrunError):
    """Another batchrun process is running on the same run folder."""


class RunFolderError(BatchrunError):
    """The run folder could not be written (disk full, I/O or permission error), or an entry in
    it is not what batchrun keeps there. The message is one paragraph naming the folder, what
    failed and the OS error."""

    @classmethod
    def writing(cls, run_dir: Path, what: str, exc: OSError) -> RunFolderError:
        """``what`` (e.g. "writing a checkpoint") failed in ``run_dir`` with ``exc``."""
        code = errno.errorcode.get(exc.errno or 0, "")
        reason = exc.strerror or str(exc)
        where = f" ({exc.filename})" if exc.filename else ""
        return cls(
            f"the run folder {run_dir} could not be written: {what} failed with "
            f"{code + ': ' if code else ''}{reason}{where}. {_HINTS.get(exc.errno or 0, '')}"
            "Rows written before the failure are intact and no request started after it; "
            "fix the folder, then run the job again to resume."
        )


_HINTS = {
    errno.ENOSPC: "The disk is full: free space on it or set output.dir elsewhere. ",
    errno.EDQUOT: "The disk quota is used up: free space or set output.dir elsewhere. ",
    errno.EACCES: "Check the folder's permissions. ",
    errno.EPERM: "Check the folder's permissions. ",
    errno.EROFS: "The file system is read-only. ",
    errno.EIO: "The device reported an I/O error: check the disk. ",
}
_POLARS_OS_ERROR = re.compile(r"\(os error (\d+)\)")
_POLARS_IO = re.compile(r"IO error|transport error", re.IGNORECASE)


def os_error(exc: BaseException) -> OSError | None:
    """The operating system's error behind ``exc``, if it is one: an ``OSError`` itself, or a
    polars error that carries one in its text (polars reports a failed write as
    ``ComputeError(... (os error 28))``). ``None`` for any other error."""
    if isinstance(exc, OSError):
        return exc
    text = str(exc)
    match = _POLARS_OS_ERROR.search(text)
    if match is not None:
        code = int(match.group(1))
        return OSError(code, os.strerror(code))
    if _POLARS_IO.search(text) is not None:  # a write torn by the OS, its errno not kept
        return OSError(errno.EIO, f"I/O error ({' '.join(text.split())[:200]})")
    return None


class EndpointUnreachable(BatchrunError):
    """No attempt reached the endpoint (every one failed to connect or timed out before a
    response) for a sustained window: the run stops (exit 69); rows not done are not recorded."""

    def __init__(self, url: str, error: str, window_s: float, attempts: int) -> None:
        super().__init__(
            f"the endpoint {url} could not be reached: {attempts} attempt(s) in the last "
            f"{window_s:g} s failed to connect or timed out and none got a response (last "
            f"error: {error}). Rows not done were not recorded; check endpoint.base_url and "
            "the network, then run the job again to resume."
        )
        self.url = url
        self.error = error


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

    @property
    def hint(self) -> str:
        """What to check before running again."""
        if self.http_status == 401 or self.error_type == "authentication_error":
            return "check the API key in the environment variable the job names"
        if self.http_status == 403 or self.error_type == "permission_error":
            return "the key has no permission for this model or endpoint"
        if self.http_status == 402 or self.error_type == "billing_error":
            return "check the organisation's billing"
        if self.error_type == "not_found_error":
            return "check request.model"
        return "the spending limit is reached; raise it or wait"
