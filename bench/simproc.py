"""The simulator in a process of its own, so that it shares neither event loop nor GIL with the
client being measured.

    with SimProcess(SimConfig(ttft_s=0, token_interval_s=0)) as sim:
        ... sim.base_url ...
        timings = sim.timings()  # request id -> (received, first content), perf_counter

The child (``python -m bench.simproc CONFIG_JSON``) serves on an ephemeral loopback port, prints
``PORT n``, then answers each line ``timings`` or ``completed`` (streams ended so far) on its
stdin with one JSON line; it exits when its stdin closes. Times are ``time.perf_counter()``,
which on Linux is ``CLOCK_MONOTONIC``: one clock for every process on the host, so they compare
directly with the client's readings.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from types import TracebackType
from typing import IO

from batchrun.sim import SimConfig, SimStats

__all__ = ["SimProcess", "same_clock"]


def same_clock() -> bool:
    """``perf_counter`` is the host-wide monotonic clock (Linux), so processes can compare it."""
    info = time.get_clock_info("perf_counter")
    return sys.platform.startswith("linux") and "CLOCK_MONOTONIC" in info.implementation


class SimProcess:
    """Starts the simulator child on enter, stops it on exit."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.base_url = ""
        self._child: subprocess.Popen[str] | None = None

    def __enter__(self) -> SimProcess:
        self._child = subprocess.Popen(
            [sys.executable, "-m", "bench.simproc", self.config.model_dump_json()],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        line = self._out.readline()
        if not line.startswith("PORT "):
            self.__exit__(None, None, None)
            raise RuntimeError(f"the simulator did not start: {line!r}")
        self.base_url = f"http://127.0.0.1:{int(line.split()[1])}"
        return self

    @property
    def _out(self) -> IO[str]:
        assert self._child is not None
        assert self._child.stdout is not None
        return self._child.stdout

    def _ask(self, what: str) -> object:
        assert self._child is not None
        assert self._child.stdin is not None
        self._child.stdin.write(what + "\n")
        self._child.stdin.flush()
        return json.loads(self._out.readline())

    def timings(self) -> dict[str, tuple[float, float]]:
        """Request id -> (request received, first content written), ``perf_counter`` seconds."""
        answer = self._ask("timings")
        assert isinstance(answer, dict)
        return {k: (v[0], v[1]) for k, v in answer.items()}

    def completed(self) -> int:
        """Streams the simulator has sent to their end so far."""
        answer = self._ask("completed")
        assert isinstance(answer, int)
        return answer

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


async def _serve(config: SimConfig) -> None:
    from aiohttp import web

    from batchrun.sim import create_app

    stats = SimStats(max_timings=1_000_000)
    runner = web.AppRunner(
        create_app(config, stats=stats), handler_cancellation=True, access_log=None
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0, backlog=4096).start()
    print(f"PORT {runner.addresses[0][1]}", flush=True)
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            if line.strip() == "timings":
                out = {t.request_id: (t.received, t.first_content) for t in stats.timings()}
                print(json.dumps(out), flush=True)
            elif line.strip() == "completed":
                print(stats.streams_completed, flush=True)
    finally:
        await runner.cleanup()


def main(argv: list[str]) -> int:
    config = SimConfig.model_validate(json.loads(argv[0]))
    asyncio.run(_serve(config))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
