"""Progress: the log line comes on a timer, whether or not requests finish; the live line's text
and when it is drawn."""

from __future__ import annotations

import asyncio
import io

from structlog.testing import capture_logs

from batchrun.telemetry.progress import Progress
from batchrun.telemetry.setup import NORMAL, QUIET, VERBOSE, LogDisplay


async def test_the_progress_line_is_logged_every_period_while_nothing_finishes() -> None:
    """With no request finishing, a batchrun.progress line still comes after every 10 s."""
    slept: list[float] = []
    two_lines = asyncio.Event()

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:  # two periods done and logged: hold the third
            two_lines.set()
            await asyncio.Event().wait()

    progress = Progress(total=5, stream=io.StringIO(), sleep=sleep)
    with capture_logs() as logs:
        progress.start()
        await two_lines.wait()
        progress.stop()
    lines = [e for e in logs if e["event"] == "batchrun.progress"]
    assert slept == [10.0, 10.0, 10.0]
    assert [(e["done"], e["total"]) for e in lines] == [(0, 5), (0, 5)]


async def test_stop_ends_the_timer() -> None:
    """After stop, the timer is cancelled: no line comes later."""
    started = asyncio.Event()

    async def sleep(seconds: float) -> None:
        started.set()
        await asyncio.Event().wait()

    progress = Progress(total=1, stream=io.StringIO(), sleep=sleep)
    progress.start()
    timer = progress._timer
    assert timer is not None
    await started.wait()
    progress.stop()
    await asyncio.wait([timer])
    assert timer.cancelled()


def test_without_an_event_loop_there_is_no_timer() -> None:
    """Started outside a running loop (a synchronous caller), progress counts without a timer."""
    progress = Progress(total=1, stream=io.StringIO())
    progress.start()
    progress.update(ok=True, output_tokens=3)
    progress.stop()
    assert progress.done == 1


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_live_line_counts_retries_by_kind() -> None:
    """`retries 6 (overloaded 3, rate_limit 1, api 1, other 1)`: the three commonest kinds
    by name (without `_error`), the rest as other."""
    progress = Progress(total=10, stream=io.StringIO())
    for kind in ("overloaded_error",) * 3 + ("rate_limit_error", "api_error", "timeout"):
        progress.retry(kind)
    line = progress._render().plain
    assert "retries 6 (overloaded 3, rate_limit 1, api 1, other 1)" in line
    assert progress.snapshot()["retries.overloaded"] == 3


def test_the_live_line_shows_the_limits_the_budget_reports() -> None:
    """A limit the budget reports appears (with thousands separators); one it reports as
    None does not, nor does a pause that is over."""
    limits = {
        "concurrency": 8,
        "max_concurrency": 16,
        "requests_per_minute": 4000,
        "input_tokens_per_minute": None,
        "output_tokens_per_minute": None,
        "paused_s": 0.0,
    }
    line = Progress(total=1, stream=io.StringIO(), limits=lambda: limits)._render().plain
    assert line.endswith("concurrency 8/16  rpm 4,000")


def test_the_live_line_is_drawn_only_on_a_readable_terminal_not_quiet() -> None:
    """A terminal gets the live line unless the logs are JSON lines or the run is quiet."""
    tty, pipe = _Terminal(), io.StringIO()
    assert LogDisplay().live_progress(tty)
    assert LogDisplay(NORMAL, console=True).live_progress(tty)
    assert not LogDisplay().live_progress(pipe)
    assert not LogDisplay(NORMAL, console=False).live_progress(tty)
    assert not LogDisplay(QUIET, console=True).live_progress(tty)
    assert LogDisplay(VERBOSE, console=True).live_progress(tty)
