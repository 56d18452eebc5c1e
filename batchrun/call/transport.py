"""Part of stage 3 (call): an httpx transport that sends requests with aiohttp.

httpx stays the interface (``client.stream(...)``, its timeouts, its exceptions); only the
network layer below it changes. httpx's own transport (httpcore over anyio) costs several times
more CPU per streamed byte, and a client that is CPU-bound reports every time-to-first-token
late by its own event-loop lag; see ``docs/performance.md`` for the numbers.

Timeouts map one to one: httpx's ``connect`` is aiohttp's ``sock_connect``, ``read`` (the idle
timeout) is ``sock_read``, the time allowed between two reads, headers included; ``pool`` is
how long to wait for a free connection. aiohttp's exceptions leave as the httpx exceptions that
httpx's own transport raises for the same failure, so the caller's error mapping is unchanged.
This is the only module that imports aiohttp's client; it must not retry, time or parse.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator

import aiohttp
import httpx

__all__ = ["AiohttpTransport"]


class AiohttpTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 over one aiohttp session with at most ``limits.max_connections`` connections."""

    def __init__(self, *, limits: httpx.Limits | None = None) -> None:
        self._limits = limits or httpx.Limits()
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | None = None
        # A run sends every request with the same timeouts: one ClientTimeout for each.
        self._timeouts: dict[tuple[float | None, ...], aiohttp.ClientTimeout] = {}

    def _session_now(self) -> aiohttp.ClientSession:
        # Made on first use: an aiohttp session belongs to the event loop that makes it.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._limits.max_connections or 0,
                keepalive_timeout=self._limits.keepalive_expiry or 15.0,
            )
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    def _ssl_for(self, url: httpx.URL) -> ssl.SSLContext | bool:
        if url.scheme != "https":
            return True  # aiohttp's default; unused for plain http
        if self._ssl is None:
            self._ssl = httpx.create_ssl_context()  # the certificates httpx would trust
        return self._ssl

    def _timeout_for(self, request: httpx.Request) -> aiohttp.ClientTimeout:
        timeout = request.extensions.get("timeout", {})
        key = (timeout.get("pool"), timeout.get("connect"), timeout.get("read"))
        made = self._timeouts.get(key)
        if made is None:
            pool, connect, read = key
            made = self._timeouts[key] = aiohttp.ClientTimeout(
                total=None, connect=pool, sock_connect=connect, sock_read=read
            )
        return made

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        session = self._session_now()
        try:
            body = request.content  # a request built from bytes (every one batchrun sends)
        except httpx.RequestNotRead:
            body = await request.aread()
        try:
            response = await session.request(
                request.method,
                str(request.url),
                headers=request.headers.multi_items(),
                data=body or None,
                allow_redirects=False,
                ssl=self._ssl_for(request.url),
                timeout=self._timeout_for(request),
            )
        except (aiohttp.ClientError, OSError) as exc:
            raise _translate(exc, request) from exc
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_Body(response, request),
            request=request,
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("ascii", "replace"),
            },
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _Body(httpx.AsyncByteStream):
    """The response body, chunk by chunk as it arrives; closing it frees the connection."""

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (aiohttp.ClientError, OSError) as exc:
            raise _translate(exc, self._request) from exc

    async def aclose(self) -> None:
        # Back to the pool if the body was read to its end, else the connection is closed.
        self._response.release()


def _translate(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    """The httpx exception that httpx's own transport raises for the same failure."""
    message = str(exc) or type(exc).__name__
    kind: type[httpx.TransportError]
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        kind = httpx.ConnectTimeout
    elif isinstance(exc, aiohttp.ServerTimeoutError):
        kind = httpx.ReadTimeout
    elif isinstance(exc, aiohttp.ClientConnectorError):
        kind = httpx.ConnectError
    elif isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        kind = httpx.RemoteProtocolError  # the peer closed before the message was complete
    elif isinstance(exc, aiohttp.ClientResponseError):
        kind = httpx.RemoteProtocolError  # a malformed response
    elif isinstance(exc, aiohttp.InvalidURL):
        kind = httpx.UnsupportedProtocol
    else:
        kind = httpx.ReadError  # reset by peer and other socket errors
    return kind(message, request=request)
