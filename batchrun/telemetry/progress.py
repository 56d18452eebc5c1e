"""Progress of a run: a live line on a terminal, periodic log lines elsewhere (cron).

Counts only; it never decides anything. The stream driver calls ``update`` as requests finish and
``retry`` as attempts fail; ``start``/``stop`` bracket the run. The live line is drawn when the
logs are readable lines on a terminal and not quiet (:meth:`LogDisplay.live_progress`); it counts
retries by error type (``retries 12 (overloaded 9, rate_limit 2)``), which readable logs then
leave out line by line. Otherwise the ``batchrun.progress`` line is logged every ``log_every_s``
on a timer, so a run whose requests all wait (a rate-limit debt, a stalled server) still says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TextIO

import structlog
from rich.console import Console
from rich.live import Live
from rich.text import Text

from batchrun.clock import Sleep
from batchrun.telemetry.setup import log_display

__all__ = ["Progress"]

log = structlog.get_logger()


@dataclass
class Progress:
    """Counters of a run and their display."""

    total: int
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    log_every_s: float = 10.0
    # The budget's effective limits and concurrency, shown beside the counts.
    limits: Callable[[], Mapping[str, int | float | None]] = dict
    sleep: Sleep = asyncio.sleep  # the timer's: tests pass one that needs no real time
    ok: int = 0
    error: int = 0
    retries: int = 0
    retried: Counter[str] = field(default_factory=Counter)  # retries by error type
    output_tokens: int = 0
    _started: float = field(default_factory=time.perf_counter)
    _live: Live | None = None
    _timer: asyncio.Task[None] | None = None

    @property
    def done(self) -> int:
        return self.ok + self.error

    def start(self) -> None:
        """Start the display: a live line on a terminal, else the log timer (in a running
        event loop)."""
        self._started = time.perf_counter()
        if log_display().live_progress(self.stream):
            console = Console(file=self.stream)
            self._live = Live(self._render(), console=console, refresh_per_second=4)
            self._live.start()
        else:
            with contextlib.suppress(RuntimeError):  # no running loop: no timer
                self._timer = asyncio.get_running_loop().create_task(self._log_periodically())

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()
            self._live = None

    def retry(self, error_type: str | None = None) -> None:
        """An attempt failed and will be tried again; ``error_type`` as its error says."""
        self.retries += 1
        if error_type:
            self.retried[error_type.removesuffix("_error")] += 1
        if self._live is not None:
            self._live.update(self._render())

    def update(self, *, ok: bool, output_tokens: int | None) -> None:
        if ok:
            self.ok += 1
        else:
            self.error += 1
        self.output_tokens += output_tokens or 0
        if self._live is not None:
            self._live.update(self._render())

    async def _log_periodically(self) -> None:
        while True:
            await self.sleep(self.log_every_s)
            log.info("batchrun.progress", **self.snapshot())

    def snapshot(self) -> dict[str, float | int | None]:
        """The counts, rates and ETA, and the effective limits (``limits.*``)."""
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        rate = self.done / elapsed
        remaining = self.total - self.done
        return {
            **{f"limits.{k}": v for k, v in self.limits().items()},
            "done": self.done,
            "total": self.total,
            "ok": self.ok,
            "error": self.error,
            "retries": self.retries,
            **{f"retries.{kind}": n for kind, n in sorted(self.retried.items())},
            "requests_per_s": round(rate, 2),
            "output_tokens_per_s": round(self.output_tokens / elapsed, 1),
            "eta_s": round(remaining / rate, 1) if rate > 0 else None,
        }

    def _render(self) -> Text:
        s = self.snapshot()
        eta = "?" if s["eta_s"] is None else f"{s['eta_s']:.0f}s"
        pct = 100 * self.done / self.total if self.total else 100.0
        return Text(
            f"{self.done}/{self.total} ({pct:.0f}%)  ok {self.ok}  error {self.error}  "
            f"retries {self.retries}{self._retry_kinds()}  {s['requests_per_s']} req/s  "
            f"{s['output_tokens_per_s']} tok/s  ETA {eta}{self._limits_text()}"
        )

    def _retry_kinds(self) -> str:
        if not self.retried:
            return ""
        kinds = self.retried.most_common()
        shown = ", ".join(f"{kind} {n}" for kind, n in kinds[:3])
        if len(kinds) > 3:
            shown += f", other {sum(n for _, n in kinds[3:])}"
        return f" ({shown})"

    def _limits_text(self) -> str:
        """The budget's limits as it reports them: only those configured or seen to bind; with
        several models, each model's under its name (``<model>.<key>``)."""
        limits = self.limits()
        text = ""
        if limits.get("concurrency") is not None:
            text += f"  concurrency {limits['concurrency']}/{limits.get('max_concurrency')}"
        groups: dict[str, list[str]] = {}
        for name, value in limits.items():
            model, _, key = name.rpartition(".")
            if not value:
                continue
            if key in _LIMIT_LABELS:
                groups.setdefault(model, []).append(f"{_LIMIT_LABELS[key]} {value:,}")
            elif key == "paused_s":
                groups.setdefault(model, []).append(f"paused {value:.0f}s (429)")
        for model, shown in groups.items():
            text += f"  {model}: {', '.join(shown)}" if model else "  " + "  ".join(shown)
        return text


_LIMIT_LABELS = {
    "requests_per_minute": "rpm",
    "input_tokens_per_minute": "input tpm",
    "output_tokens_per_minute": "output tpm",
}
