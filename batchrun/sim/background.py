"""Simulator: runs the server on loopback in a thread with its own event loop.

So that tests, benchmarks and ``base_url: sim`` jobs get a real HTTP server without sharing the
client's event loop. It must not contain request handling (that is ``server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from types import TracebackType

from aiohttp import web

from batchrun.sim.config import SimConfig
from batchrun.sim.server import create_app
from batchrun.sim.stats import SimStats

__all__ = ["SimServer"]


class SimServer:
    """Runs the simulator on 127.0.0.1 in a background thread with its own event loop.

    ``start()`` returns once the server accepts connections; ``stop()`` cancels whatever is still
    streaming and waits for the thread. It can be started again after a stop; ``stats`` carry on,
    attempt counts and the prompt cache start afresh. ``clock`` (seconds, any origin) times
    prompt-cache entries; a test passes its own to move time.
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config if config is not None else SimConfig()
        self.clock = clock
        self.host = host
        self.port = port
        self.stats = SimStats()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._base_url: str | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` of the running server."""
        if self._base_url is None:
            raise RuntimeError("the simulator is not running: call start() first")
        return self._base_url

    def start(self) -> None:
        """Start serving; raise what the server raised if it could not start."""
        if self._thread is not None:
            raise RuntimeError("the simulator is already running")
        ready = threading.Event()
        self._error = None
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="batchrun-sim", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout=30):
            raise RuntimeError("the simulator did not start within 30 s")
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error

    def stop(self) -> None:
        """Stop serving: cancel streams in flight, close the listener and join the thread."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None and not loop.is_closed():
            # The loop may close between the check and the call.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        thread.join(timeout=30)
        self._thread = self._loop = self._stopping = None
        self._base_url = None

    def __enter__(self) -> SimServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._main(ready))
        except BaseException as exc:  # handed to start(), which re-raises it
            self._error = exc
        finally:
            ready.set()

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        runner = web.AppRunner(
            create_app(self.config, stats=self.stats, clock=self.clock),
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=1.0,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
            host, port = runner.addresses[0][:2]
            self._base_url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
            ready.set()
            await self._stopping.wait()
        finally:
            await runner.cleanup()
