"""The API endpoint: the httpx client that carries the key (read by
:func:`batchrun.preflight.api_key`).

The only place the key is put into a header; the client is wired here with auth,
timeouts and transport (aiohttp-backed unless a test passes its own). Nothing is sent here.

:class:`ApiClient` is httpx's client with one lean path added for the streamed attempts, the
hot path of a run: ``open_stream`` builds the request from parts prepared once and hands it
straight to the transport, skipping what ``AsyncClient.send`` does per request and a run never
uses (URL merging, cookie jars, auth flows, redirects, event hooks): ~80 µs a request, a
tenth of a run's event-loop time with short answers. Everything else (``post``, ``get``: the
batch API, ``count_tokens``) goes through httpx as usual, on the same transport.

The client carries the run's :class:`~batchrun.call.secrets.Scrubber` (the key, the Redis
password): what a server sends is scrubbed with it where it enters, and log lines once more.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec

from batchrun import __version__
from batchrun.call.secrets import NO_SECRETS, Scrubber, redis_password
from batchrun.job.schema import Job
from batchrun.telemetry.setup import scrubbed_logs

__all__ = ["ApiClient", "base_url", "http_client"]


class ApiClient(httpx.AsyncClient):
    """An ``httpx.AsyncClient`` whose streamed POSTs go straight to its transport.

    ``fingerprint`` names the key and URL it sends with (a hash, never the key): the rate
    budget's shared state is kept under it. ``scrubber`` removes the secrets it sends with from
    whatever text its responses bring.
    """

    def __init__(
        self,
        *,
        transport: httpx.AsyncBaseTransport,
        fingerprint: str = "",
        scrubber: Scrubber = NO_SECRETS,
        **kwargs: Any,
    ) -> None:
        super().__init__(transport=transport, **kwargs)
        self.fingerprint = fingerprint
        self.scrubber = scrubber
        self._direct = transport
        self._urls: dict[str, httpx.URL] = {}
        # The client's timeouts as a request carries them, made again only if they change.
        self._timeouts: tuple[httpx.Timeout | None, dict[str, float | None]] = (None, {})

    @contextlib.asynccontextmanager
    async def open_stream(self, path: str, body: Any) -> AsyncIterator[httpx.Response]:
        """POST ``body`` as JSON to ``path`` (under ``base_url``) and yield the response, its
        body not yet read; closed on exit. Headers and timeouts are the client's."""
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = httpx.URL(str(self.base_url).rstrip("/") + path)
        timeout, timeouts = self._timeouts
        if timeout is not self.timeout:  # set anew since the last request
            timeout, timeouts = self._timeouts = (self.timeout, self.timeout.as_dict())
        request = httpx.Request(
            "POST",
            url,
            headers=self.headers,
            content=msgspec.json.encode(body),
            extensions={"timeout": timeouts},
        )
        response = await self._direct.handle_async_request(request)
        try:
            yield response
        finally:
            await response.aclose()


@contextlib.asynccontextmanager
async def http_client(
    job: Job, base_url: str, api_key: str, transport: httpx.AsyncBaseTransport | None
) -> AsyncIterator[ApiClient]:
    t = job.timeouts
    concurrency = job.limits.concurrency
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    if transport is None:
        from batchrun.call.transport import AiohttpTransport  # aiohttp: ~0.3 s, not for validate

        transport = AiohttpTransport(limits=limits)
    scrubber = Scrubber([api_key, *redis_password(job.limits.redis_url)])
    with scrubbed_logs(scrubber.text):
        async with ApiClient(
            base_url=base_url,
            fingerprint=hashlib.sha256(f"{api_key}\n{base_url}".encode()).hexdigest(),
            scrubber=scrubber,
            headers={
                **job.request.api_spec.headers(
                    api_key, job.endpoint.anthropic_version, job.endpoint.betas
                ),
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
