"""How a run ends: the outcome a run returns and the process exit codes of CONTRACT.md."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from pathlib import Path

from batchrun.errors import FatalAPIError

__all__ = [
    "EXIT_FATAL",
    "EXIT_OK",
    "EXIT_ROW_ERRORS",
    "SIGNAL_EXIT",
    "RunOutcome",
    "Stop",
    "fatal_hint",
]

EXIT_OK, EXIT_ROW_ERRORS, EXIT_FATAL = 0, 1, 3
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """How a run ended: where its files are, its counts and the process exit code."""

    run_dir: Path
    run_id: str
    counts: dict[str, int]
    exit_code: int
    status: str  # complete | aborted | interrupted
    message: str | None = None
    sent: int = 0  # requests this run took on (the rest were already done)


@dataclass
class Stop:
    """Why a run stopped sending early, if it did: a fatal API error or a signal."""

    event: asyncio.Event = field(default_factory=asyncio.Event)
    fatal: FatalAPIError | None = None
    signal: signal.Signals | None = None


def fatal_hint(exc: FatalAPIError) -> str:
    """What to check after an error that aborted the run."""
    if exc.http_status == 401 or exc.error_type == "authentication_error":
        return "check the API key in the environment variable the job names"
    if exc.http_status == 403 or exc.error_type == "permission_error":
        return "the key has no permission for this model or endpoint"
    if exc.http_status == 402 or exc.error_type == "billing_error":
        return "check the organisation's billing"
    if exc.error_type == "not_found_error":
        return "check request.model"
    return "the spending limit is reached; raise it or wait"
