"""How a run ends: the outcome a run returns and the process exit codes of CONTRACT.md."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batchrun.errors import SIGNAL_EXIT, FatalAPIError

__all__ = [
    "RunOutcome",
    "Stop",
    "catch_signals",
    "fatal_hint",
]


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


def catch_signals(
    loop: asyncio.AbstractEventLoop, on_signal: Callable[[signal.Signals], None]
) -> Callable[[], None]:
    """Have ``on_signal(sig)`` run on ``loop`` for SIGINT and SIGTERM; returns the undo.

    Not ``loop.add_signal_handler``: that learns of a signal from a byte in the loop's wakeup
    pipe, and under load the pipe can be full (every async generator the garbage collector
    finalises writes a byte to it; httpx leaves three per streamed response), and then the
    signal is lost: a SIGTERM at 800 requests/s did nothing. A Python signal handler always
    runs, in the main thread, and schedules the call itself.
    """
    previous: dict[signal.Signals, Any] = {}

    def handler(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(on_signal, signal.Signals(signum))

    for sig in SIGNAL_EXIT:
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
