"""Progress: the log line comes on a timer, whether or not requests finish."""

from __future__ import annotations

import asyncio
import io

from structlog.testing import capture_logs

from batchrun.telemetry.progress import Progress


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
