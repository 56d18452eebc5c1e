"""The clients being compared, each run in a fresh process against a simulator on loopback.

    python -m bench.clients KIND SPEC_JSON    (prints one JSON line: the Outcome)

``batchrun`` runs a whole job (input file, retries, results, attempts and traces written);
``sdk`` is the official SDK as users run it (``AsyncAnthropic``, ``messages.stream``, a semaphore
of the same size); ``litellm`` is LiteLLM's async streaming completion (``acompletion(...,
stream=True)`` with an ``anthropic/`` model and ``api_base``), what multi-provider users pick;
``httpx`` and ``httpx-aiohttp`` only read the bytes of each stream, with httpx's own transport
and with batchrun's: the ceiling of what Python and the simulator allow. Every client reports,
per stream, the request id, when it sent the request and when it saw the first content, in
``perf_counter`` seconds (host-wide ``CLOCK_MONOTONIC`` on Linux), so that the simulator's own
record of its first write can be compared with them.

:func:`run_processes` runs one load as several batchrun processes side by side, each on its
share of the rows: what ``batchrun JOB --shards N --local`` does.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = ["KINDS", "MODEL", "Outcome", "Spec", "run_client", "run_processes"]

KINDS = ("batchrun", "sdk", "litellm", "httpx", "httpx-aiohttp")
MODEL = "claude-sonnet-5-5"
_HEADERS = {"x-api-key": "bench-key", "anthropic-version": "2023-06-01"}


@dataclass(frozen=True)
class Spec:
    """One load: ``streams`` requests at ``concurrency``; ``tag`` makes every prompt unique.
    With ``shards`` above 1, the client sends only the requests ``i`` with ``i % shards ==
    shard``."""

    base_url: str
    streams: int
    concurrency: int
    max_tokens: int
    tag: str
    shard: int = 0
    shards: int = 1

    def rows(self) -> range:
        return range(self.shard, self.streams, self.shards)


@dataclass
class Outcome:
    """What a client did: wall time of the whole load (from ``began``), and per stream
    (request id, sent at, first content seen at), all in ``perf_counter`` seconds."""

    elapsed_s: float
    ok: int
    firsts: list[tuple[str, float, float]] = field(default_factory=list)
    began: float = 0.0


def prompt(spec: Spec, i: int) -> str:
    return f"[{spec.tag}] Question {i}: tell me a long story about rivers and mountains."


def run_client(kind: str, spec: Spec, *, timeout_s: float = 300) -> Outcome:
    """Run ``kind`` on ``spec`` in a child process and return its outcome."""
    return _outcome(kind, _start(kind, spec), timeout_s)


def run_processes(
    spec: Spec, processes: int, *, kind: str = "batchrun", timeout_s: float = 300
) -> Outcome:
    """The load ``spec`` as ``processes`` processes of ``kind`` started together on one host,
    each on its share of the rows at ``spec.concurrency``; wall time from the first one's start
    to the last one's end.

    For batchrun each process is ``batchrun JOB --shard K/N`` on the whole input (the rows
    batchrun's own assignment gives shard K), as ``--shards N --local`` starts them; the window
    measured leaves out what the supervisor adds around the runs (interpreter start-up, the
    merge), as the one-process figure leaves out start-up.
    """
    shares = [replace(spec, shard=k, shards=processes) for k in range(processes)]
    children = [_start(kind, share) for share in shares]
    # Each child says when it has imported (and written its input), then all start at once:
    # the window measured is the runs', as it is for one process.
    for child in children:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError(f"client {kind} failed: {child.communicate()[1][-2000:]}")
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    outcomes = [_outcome(kind, child, timeout_s) for child in children]
    began = min(o.began for o in outcomes)
    ended = max(o.began + o.elapsed_s for o in outcomes)
    firsts = [first for o in outcomes for first in o.firsts]
    return Outcome(ended - began, sum(o.ok for o in outcomes), firsts, began)


def _start(kind: str, spec: Spec) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bench.clients", kind, json.dumps(asdict(spec))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _outcome(kind: str, child: subprocess.Popen[str], timeout_s: float) -> Outcome:
    try:
        out, err = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise
    if child.returncode != 0:
        raise RuntimeError(f"client {kind} failed ({child.returncode}): {err[-2000:]}")
    data = json.loads(out.strip().splitlines()[-1])
    firsts = [(f[0], f[1], f[2]) for f in data["firsts"]]
    return Outcome(data["elapsed_s"], data["ok"], firsts, data["began"])


# -- the clients, run in the child ---------------------------------------------------------


def _ready(spec: Spec) -> None:
    """One of several processes (:func:`run_processes`): say so, and start when told."""
    if spec.shards > 1:
        print("ready", flush=True)
        sys.stdin.readline()


# One stream as a baseline client saw it: ok, request id, sent at, first content seen at.
Stream = tuple[bool, str, float, float]


async def _load(spec: Spec, one: Callable[[int], Awaitable[Stream]]) -> Outcome:
    """Every request of ``spec`` through ``one``, at most ``concurrency`` at once behind a
    semaphore (what the baselines' users write), timed from when the first may start."""
    outcome = Outcome(0.0, 0)
    gate = asyncio.Semaphore(spec.concurrency)

    async def gated(i: int) -> None:
        async with gate:
            ok, request_id, sent, first = await one(i)
        outcome.ok += ok
        outcome.firsts.append((request_id, sent, first))

    _ready(spec)
    outcome.began = time.perf_counter()
    await asyncio.gather(*(gated(i) for i in spec.rows()))
    outcome.elapsed_s = time.perf_counter() - outcome.began
    return outcome


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
    async with httpx.AsyncClient(
        base_url=spec.base_url, headers=_HEADERS, limits=limits, timeout=60, transport=transport
    ) as client:

        async def one(i: int) -> Stream:
            sent = time.perf_counter()
            first = 0.0
            body = {**_body(spec, i), "stream": True}
            async with client.stream("POST", "/v1/messages", json=body) as response:
                async for chunk in response.aiter_bytes():
                    if not first and b"content_block_delta" in chunk:
                        first = time.perf_counter()
            ok = response.status_code == 200
            return ok, response.headers.get("request-id", ""), sent, first

        return await _load(spec, one)


async def _sdk(spec: Spec) -> Outcome:
    """The official SDK's streaming helper, every event consumed, behind a semaphore."""
    import anthropic

    client = anthropic.AsyncAnthropic(
        base_url=spec.base_url, api_key="bench-key", max_retries=0, timeout=60
    )

    async def one(i: int) -> Stream:
        sent = time.perf_counter()
        first = 0.0
        async with client.messages.stream(**_body(spec, i)) as stream:
            async for event in stream:
                if not first and event.type == "content_block_delta":
                    first = time.perf_counter()
            await stream.get_final_message()
        return True, stream.request_id or "", sent, first

    outcome = await _load(spec, one)
    await client.close()
    return outcome


async def _litellm(spec: Spec) -> Outcome:
    """LiteLLM's async streaming completion on its Anthropic provider, every chunk consumed,
    behind a semaphore. The request id is the one LiteLLM passes on from the response."""
    # Its price table from the package, not fetched from the network on import.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    async def one(i: int) -> Stream:
        sent = time.perf_counter()
        first = 0.0
        stream = await litellm.acompletion(
            model=f"anthropic/{MODEL}",
            messages=[{"role": "user", "content": prompt(spec, i)}],
            max_tokens=spec.max_tokens,
            stream=True,
            api_base=spec.base_url,
            api_key="bench-key",
            num_retries=0,
            timeout=60,
        )
        async for chunk in stream:
            if not first and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter()
        headers = stream._hidden_params.get("additional_headers") or {}
        return True, headers.get("llm_provider-request-id", ""), sent, first

    return await _load(spec, one)


def _batchrun(spec: Spec) -> Outcome:
    """A whole job through ``run_job``, telemetry to files; first content from attempts.parquet."""
    import logging

    import polars as pl
    import structlog
    import yaml

    from batchrun.clock import Clock
    from batchrun.job.schema import load_job
    from batchrun.run import run_job
    from batchrun.shard.assign import Shard

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    os.environ.setdefault("BENCH_API_KEY", "bench-key")
    with tempfile.TemporaryDirectory(prefix="batchrun-bench-") as folder:
        root = Path(folder)
        # One of several processes: the whole input, and the rows of shard K of N by batchrun's
        # own assignment (`batchrun JOB --shard K/N`, what each process of --shards N --local is).
        every = range(spec.streams) if spec.shards > 1 else spec.rows()
        pl.DataFrame(
            {"id": [f"r{i}" for i in every], "prompt": [prompt(spec, i) for i in every]}
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
        if spec.shards > 1:
            job = job.with_shard(Shard(spec.shard, spec.shards))
        # Loaded on the run's first request otherwise; the baselines import theirs before too.
        import batchrun.call.transport  # noqa: F401

        _ready(spec)

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
    return Outcome(elapsed, result.counts.get("ok", 0), firsts, began)


def main(argv: list[str]) -> int:
    kind, spec = argv[0], Spec(**json.loads(argv[1]))
    if kind == "batchrun":
        outcome = _batchrun(spec)
    elif kind == "sdk":
        outcome = asyncio.run(_sdk(spec))
    elif kind == "litellm":
        outcome = asyncio.run(_litellm(spec))
    elif kind in ("httpx", "httpx-aiohttp"):
        outcome = asyncio.run(_bare(spec, aiohttp_transport=kind == "httpx-aiohttp"))
    else:
        raise SystemExit(f"unknown client {kind!r}; one of {', '.join(KINDS)}")
    print(json.dumps(asdict(outcome)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
