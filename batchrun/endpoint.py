"""The API endpoint: the key from the environment and the httpx client that carries it.

The only place the key is read and put into a header; the client is wired here with auth,
timeouts and transport (aiohttp-backed unless a test passes its own). Nothing is sent here.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import httpx

from batchrun import __version__
from batchrun.errors import JobError
from batchrun.job import Job
from batchrun.transport import AiohttpTransport

__all__ = ["api_key", "base_url", "http_client"]


def api_key(job: Job) -> str:
    """The key the job names, or a stand-in for the built-in simulator."""
    name = job.endpoint.api_key_env
    key = os.environ.get(name, "")
    if key.strip():
        return key.strip()
    if job.endpoint.base_url == "sim":
        return "sim-key"
    state = "empty" if name in os.environ else "not set"
    raise JobError(
        f"{job.path}: endpoint.api_key_env: the environment variable {name} is {state}; "
        f"export {name}=... with your API key (or use base_url: sim to run on the built-in "
        "simulator)"
    )


@contextlib.asynccontextmanager
async def http_client(
    job: Job, base_url: str, api_key: str, transport: httpx.AsyncBaseTransport | None
) -> AsyncIterator[httpx.AsyncClient]:
    t = job.timeouts
    concurrency = job.limits.concurrency
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    if transport is None:
        transport = AiohttpTransport(limits=limits)
    async with httpx.AsyncClient(
        base_url=base_url,
        headers={
            "x-api-key": api_key,
            "anthropic-version": job.endpoint.anthropic_version,
            "content-type": "application/json",
            "user-agent": f"batchrun/{__version__}",
        },
        timeout=httpx.Timeout(connect=t.connect_s, read=t.idle_s, write=t.idle_s, pool=None),
        limits=limits,
        transport=transport,
    ) as client:
        yield client


def base_url(job: Job, stack: contextlib.ExitStack) -> str:
    """Where to send: the job's URL, or the built-in simulator's, started for ``stack``'s life."""
    url = str(job.endpoint.base_url)
    if url == "sim":
        from batchrun.sim import SimServer  # the simulator's server loads only when it is used

        url = stack.enter_context(SimServer(job.sim)).base_url
    return url
