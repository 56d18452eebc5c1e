"""Shared test helpers: job files in a temporary folder, and the simulator on loopback."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, settings

from batchrun.record.schema import RESULT_SCHEMA
from batchrun.sim import SimServer
from batchrun.sim.config import SimConfig


def pytest_configure(config: pytest.Config) -> None:
    """Shared rate-limit state goes to a throwaway folder, never the user's state directory;
    set before any test builds a subprocess environment from os.environ."""
    os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="batchrun-state-")


# Hypothesis fails an example that takes over 200 ms of wall time, and a test whose data is
# slow to generate: on a loaded host either happens to correct code. No property here is
# about speed, so neither is checked.
settings.register_profile("batchrun", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("batchrun")


FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures"


def fixture_path(*parts: str) -> Path:
    """A file or folder under tests/fixtures; missing, it is an error when the tests are
    collected, never a skip or an empty parametrisation."""
    path = FIXTURE_DIR.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"test fixture missing: {path}")
    return path


FIXTURES = fixture_path("anthropic-streams")
# Every captured stream (see its README.md): a file missing or not listed here is an error.
STREAM_NAMES = (
    "basic_response",
    "compaction_response",
    "fallback_credit_response",
    "fallback_response",
    "incomplete_partial_json_response",
    "refusal_response",
    "stream-a-refusal",
    "stream-a-toolrefusal",
    "stream-b-fallback",
    "tool_use_response",
)
STREAM_FILES = [fixture_path("anthropic-streams", f"{name}.sse") for name in STREAM_NAMES]
if sorted(FIXTURES.glob("*.sse")) != sorted(STREAM_FILES):
    raise FileNotFoundError(f"{FIXTURES}: the .sse files differ from conftest.STREAM_NAMES")

QUESTIONS = [
    "What is the capital of France?",
    "Explain photosynthesis briefly.",
    "Why is the sky blue?",
    "Name three prime numbers.",
    "What does HTTP 529 mean?",
    "Translate 'good morning' into German.",
    "How many legs does a spider have?",
    "What is the boiling point of water?",
]


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


JobWriter = Callable[..., Path]


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """Each test starts with structlog's defaults: a command a test runs configures logging for
    the process (at info, say), and a later test capturing debug lines must not depend on the
    order the tests ran in."""
    yield
    import structlog

    structlog.reset_defaults()


@pytest.fixture
def write_job(tmp_path: Path) -> JobWriter:
    """Write a CSV of `rows` questions and a job file over it; returns the job file's path.

    The job runs fast: the simulator answers at once, backoffs are tiny, and the run folder is
    `tmp_path/out`. `extra` is merged into the job (e.g. {"request": {"api": "complete"}}).
    """

    def write(rows: int = 6, extra: dict[str, Any] | None = None, name: str = "job") -> Path:
        lines = ["id,question"] + [f"r{i},{QUESTIONS[i % len(QUESTIONS)]}" for i in range(rows)]
        (tmp_path / "data.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
        job: dict[str, Any] = {
            "name": name,
            "input": {"path": "data.csv", "id_column": "id", "prompt": "{question}"},
            "request": {"api": "messages", "model": "claude-sonnet-5-5", "max_tokens": 64},
            "endpoint": {"base_url": "sim"},
            "limits": {"concurrency": 4},
            "retry": {"max_attempts": 3, "initial_backoff_s": 0.001, "max_backoff_s": 0.01},
            "timeouts": {"connect_s": 2, "idle_s": 2, "total_s": 10},
            "output": {"dir": "out"},
            "telemetry": {"traces": "none"},
            "sim": {"ttft_s": 0, "token_interval_s": 0},
        }
        job = deep_merge(job, extra or {})
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")
        return path

    return write


@pytest.fixture
def sim_server() -> Iterator[Callable[..., SimServer]]:
    """Start simulators on loopback with the given settings; all are stopped after the test."""
    started: list[SimServer] = []

    def start(**config: Any) -> SimServer:
        server = SimServer(SimConfig.model_validate({"ttft_s": 0, "token_interval_s": 0, **config}))
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def wait_until(
    ready: Callable[[], bool],
    what: str,
    *,
    proc: subprocess.Popen[Any] | None = None,
    timeout_s: float = 60.0,
) -> None:
    """Poll ``ready`` until it holds; fail naming ``what`` if ``proc`` exits first or the
    deadline passes. Tests wait for an event this way, never for a fixed time."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if proc is not None and proc.poll() is not None:
            _, stderr = proc.communicate()
            tail = stderr[-3000:] if stderr else ""
            pytest.fail(f"the process exited ({proc.returncode}) before {what}:\n{tail!s}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout_s:.0f} s")
        time.sleep(0.01)


async def await_until(
    ready: Callable[[], bool | Awaitable[bool]], what: str, *, timeout_s: float = 60.0
) -> None:
    """:func:`wait_until` for a coroutine: ``ready`` may be async; the loop keeps running."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = ready()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {timeout_s:.0f} s")
        await asyncio.sleep(0.01)


def checkpoint_parts(run_dir: Path) -> int:
    """How many results checkpoint parts the run folder holds now."""
    return len(list(run_dir.glob("parts/results-*.parquet")))


def wait_for_checkpoint(
    run_dir: Path, proc: subprocess.Popen[str], *, after: int = 0, timeout_s: float = 60.0
) -> None:
    """Wait until the run in ``proc`` has written a results part beyond the first ``after``:
    it is running, its signal handlers are set, and it has rows on disk."""
    wait_until(
        lambda: checkpoint_parts(run_dir) > after,
        f"checkpoint part under {run_dir / 'parts'}",
        proc=proc,
        timeout_s=timeout_s,
    )


async def no_sleep(seconds: float) -> None:
    """An injected sleep for backoffs: yields to the loop but does not wait."""
    await asyncio.sleep(0)


def stored_result(
    id_: str, sample: int = 0, status: str = "ok", *, at: datetime, **extra: Any
) -> dict[str, Any]:
    """A results.parquet row as a run stores it (``extra`` sets or overrides columns), for
    tests that prepare a run folder with :class:`~batchrun.record.parquet.ResultsWriter`."""
    row: dict[str, Any] = dict.fromkeys(RESULT_SCHEMA)
    row.update(
        run_id="r1",
        id=id_,
        sample=sample,
        model="m",
        api="messages",
        status=status,
        attempts=1,
        started_at=at,
        finished_at=at,
    )
    row.update(extra)
    return row


def race_two_processes(child_source: str, arg: str) -> list[Any]:
    """Run ``python -c child_source arg`` twice; start both at one moment; their JSON outputs.

    Each child prints ``ready``, then reads a ``time.monotonic()`` start instant from stdin
    (the clock is host-wide), does its work and prints one JSON value.
    """
    children = [
        subprocess.Popen(
            [sys.executable, "-c", child_source, arg],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for child in children:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
    start = f"{time.monotonic() + 0.1}\n"
    for child in children:
        assert child.stdin is not None
        child.stdin.write(start)
        child.stdin.close()
    outputs = [child.stdout.read() for child in children if child.stdout is not None]
    assert [child.wait(timeout=30) for child in children] == [0, 0]
    for child in children:
        assert child.stdout is not None
        child.stdout.close()
    return [json.loads(out) for out in outputs]


class FakeTime:
    """A clock and a sleep: sleeping moves the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


def run_cli(
    job: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m batchrun.cli JOB ARGS`` in a child process, with a test key by default."""
    return subprocess.run(
        [sys.executable, "-m", "batchrun.cli", str(job), *args],
        env=env if env is not None else {**os.environ, "ANTHROPIC_API_KEY": "test-key"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
