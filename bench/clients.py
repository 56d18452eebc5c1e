"""The clients being compared, each run in a fresh process against a simulator on loopback.

    python -m bench.clients KIND SPEC_JSON    (prints one JSON line: the Outcome)

``batchrun`` runs a whole job (input file, retries, results, attempts and traces written);
``sdk`` is the official SDK as users run it (``AsyncAnthropic``, ``messages.stream``, a semaphore
of the same size); ``httpx`` and ``httpx-aiohttp`` only read the bytes of each stream, with
httpx's own transport and with batchrun's: the ceiling of what Python and the simulator allow.
Every client reports, per stream, the request id, when it sent the request and when it saw the
first content, in ``perf_counter`` seconds (host-wide ``CLOCK_MONOTONIC`` on Linux), so that the
simulator's own record of its first write can be compared with them.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["KINDS", "Outcome", "Spec", "run_client"]

KINDS = ("batchrun", "sdk", "httpx", "httpx-aiohttp")
MODEL = "claude-sonnet-4-5"
_HEADERS = {"x-api-key": "bench-key", "anthropic-version": "2023-06-01"}


@dataclass(frozen=True)
class Spec:
    """One load: ``streams`` requests at ``concurrency``; ``tag`` makes every prompt unique."""

    base_url: str
    streams: int
    concurrency: int
    max_tokens: int
    tag: str


@dataclass
class Outcome:
    """What a client did: wall time of the whole load, and per stream (request id, sent at,
    first content seen at) in ``perf_counter`` seconds."""

    elapsed_s: float
    ok: int
    firsts: list[tuple[str, float, float]] = field(default_factory=list)


def prompt(spec: Spec, i: int) -> str:
    return f"[{spec.tag}] Question {i}: tell me a long story about rivers and mountains."


def run_client(kind: str, spec: Spec, *, timeout_s: float = 300) -> Outcome:
    """Run ``kind`` on ``spec`` in a child process and return its outcome."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.clients", kind, json.dumps(asdict(spec))],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"client {kind} failed ({done.returncode}): {done.stderr[-2000:]}")
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return Outcome(data["elapsed_s"], data["ok"], [tuple(f) for f in data["firsts"]])


# -- the clients, run in the child ---------------------------------------------------------


def _body(spec: Spec, i: int) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": spec.max_tokens,
        "messages": [{"role": "user", "content": prompt(spec, i)}],
    }


async def _bare(spec: Spec, aiohttp_transport: bool) -> Outcome:
    """Only read the bytes; the first content is the first read holding a content delta."""
    import httpx

    from batchrun.call.transport import AiohttpTransport

    limits = httpx.Limits(max_connections=spec.concurrency)
    transport = AiohttpTransport(limits=limits) if aiohttp_transport else None
    outcome = Outcome(0.0, 0)
    gate = asyncio.Semaphore(spec.concurrency)
    async with httpx.AsyncClient(
        base_url=spec.base_url, headers=_HEADERS, limits=limits, timeout=60, transport=transport
    ) as client:

        async def one(i: int) -> None:
            async with gate:
                sent = time.perf_counter()
                first = 0.0
                body = {**_body(spec, i), "stream": True}
                async with client.stream("POST", "/v1/messages", json=body) as response:
                    async for chunk in response.aiter_bytes():
                        if not first and b"content_block_delta" in chunk:
                            first = time.perf_counter()
                outcome.ok += response.status_code == 200
                outcome.firsts.append((response.headers.get("request-id", ""), sent, first))

        began = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(spec.streams)))
        outcome.elapsed_s = time.perf_counter() - began
    return outcome


async def _sdk(spec: Spec) -> Outcome:
    """The official SDK's streaming helper, every event consumed, behind a semaphore."""
    import anthropic

    client = anthropic.AsyncAnthropic(
        base_url=spec.base_url, api_key="bench-key", max_retries=0, timeout=60
    )
    outcome = Outcome(0.0, 0)
    gate = asyncio.Semaphore(spec.concurrency)

    async def one(i: int) -> None:
        async with gate:
            sent = time.perf_counter()
            first = 0.0
            async with client.messages.stream(**_body(spec, i)) as stream:
                async for event in stream:
                    if not first and event.type == "content_block_delta":
                        first = time.perf_counter()
                await stream.get_final_message()
            outcome.ok += 1
            outcome.firsts.append((stream.request_id or "", sent, first))

    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(spec.streams)))
    outcome.elapsed_s = time.perf_counter() - began
    await client.close()
    return outcome


def _batchrun(spec: Spec) -> Outcome:
    """A whole job through ``run_job``, telemetry to files; first content from attempts.parquet."""
    import logging

    import polars as pl
    import structlog
    import yaml

    from batchrun.clock import Clock
    from batchrun.job.schema import load_job
    from batchrun.run import run_job

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    os.environ.setdefault("BENCH_API_KEY", "bench-key")
    with tempfile.TemporaryDirectory(prefix="batchrun-bench-") as folder:
        root = Path(folder)
        pl.DataFrame(
            {
                "id": [f"r{i}" for i in range(spec.streams)],
                "prompt": [prompt(spec, i) for i in range(spec.streams)],
            }
        ).write_parquet(root / "input.parquet")
        job_file = {
            "name": "bench",
            "input": {"path": "input.parquet", "id_column": "id", "prompt": "{prompt}"},
            "request": {"model": MODEL, "max_tokens": spec.max_tokens},
            "endpoint": {"base_url": spec.base_url, "api_key_env": "BENCH_API_KEY"},
            # One process on the host: a budget shared through SQLite would buy nothing here.
            "limits": {"concurrency": spec.concurrency, "shared": False},
            "timeouts": {"connect_s": 30, "idle_s": 60, "total_s": 300},
            "output": {"dir": "out"},
            "telemetry": {"traces": "file"},
        }
        (root / "job.yaml").write_text(yaml.safe_dump(job_file), encoding="utf-8")
        job = load_job(root / "job.yaml")
        clock = Clock()
        began = time.perf_counter()
        with open(os.devnull, "w") as quiet:
            result = asyncio.run(run_job(job, clock=clock, progress_stream=quiet))
        elapsed = time.perf_counter() - began
        attempts = pl.read_parquet(result.run_dir / "attempts.parquet")
        traces = (result.run_dir / "traces.jsonl").stat().st_size
    if not traces:
        raise RuntimeError("batchrun wrote no traces")
    firsts = [
        (rid, sent, sent + ttft)
        for rid, started, ttft in attempts.select("request_id", "started_at", "ttft_s").iter_rows()
        if ttft is not None
        for sent in [clock.origin_mono + (started - clock.origin_wall).total_seconds()]
    ]
    return Outcome(elapsed, result.counts.get("ok", 0), firsts)


def main(argv: list[str]) -> int:
    kind, spec = argv[0], Spec(**json.loads(argv[1]))
    if kind == "batchrun":
        outcome = _batchrun(spec)
    elif kind == "sdk":
        outcome = asyncio.run(_sdk(spec))
    elif kind in ("httpx", "httpx-aiohttp"):
        outcome = asyncio.run(_bare(spec, aiohttp_transport=kind == "httpx-aiohttp"))
    else:
        raise SystemExit(f"unknown client {kind!r}; one of {', '.join(KINDS)}")
    print(json.dumps(asdict(outcome)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
