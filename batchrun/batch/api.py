"""Batch mode's calls to the Message Batches API: create, retrieve, list, cancel, results.

One method per endpoint, each one HTTP request (no retries, no waiting: the caller decides).
Every failure leaves as an :class:`~batchrun.errors.AttemptError` classified by the API's own
table (:meth:`~batchrun.apis.Api.classify`); httpx's exceptions are translated here. A 4xx
means the API answered and refused (:func:`refused`); anything else (no answer, a timeout, a
5xx, a 200 that cannot be read) leaves a ``create`` in doubt, which only the batch list can
settle. Results are read as JSON lines from the batch's ``results_url`` path on the job's own
endpoint, so the key never goes to a host the job did not name. Everything an answer brings
(batch objects, result lines, error bodies) is scrubbed of the run's secrets here, where it
enters, with the client's :class:`~batchrun.call.secrets.Scrubber`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from batchrun.apis import Api
from batchrun.call.attempt import clean_error, http_error
from batchrun.call.endpoint import ApiClient
from batchrun.call.secrets import NO_SECRETS, Scrubber
from batchrun.errors import AttemptError, RetryableError

__all__ = ["BATCHES", "BatchesAPI", "parse_time", "refused"]

BATCHES = "/v1/messages/batches"
_PAGE = 100


def refused(exc: AttemptError) -> bool:
    """The API answered and did not take the request (a 4xx): nothing was created."""
    return exc.http_status is not None and 400 <= exc.http_status < 500


def parse_time(text: Any) -> datetime | None:
    """An RFC 3339 time from the API (``...Z``, any digits of fraction); ``None`` if unreadable."""
    if not isinstance(text, str):
        return None
    head, dot, rest = text.partition(".")
    if dot:  # at most microseconds for fromisoformat
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


class BatchesAPI:
    """The Message Batches endpoints on a configured client (base URL, key, version, timeouts);
    errors are read as ``api`` (the job's) reads them."""

    def __init__(self, client: httpx.AsyncClient, api: Api) -> None:
        self.client = client
        self.api = api
        self.scrub: Scrubber = client.scrubber if isinstance(client, ApiClient) else NO_SECRETS

    async def create(self, body: bytes) -> tuple[dict[str, Any], str | None]:
        """Create a batch from a ready JSON body; the batch object and the response's request-id."""
        response = await self._send("POST", BATCHES, content=body)
        request_id = response.headers.get(self.api.request_id_header)
        return self._object(response), None if request_id is None else self.scrub.short(request_id)

    async def retrieve(self, batch_id: str) -> dict[str, Any]:
        return self._object(await self._send("GET", f"{BATCHES}/{batch_id}"))

    async def cancel(self, batch_id: str) -> dict[str, Any]:
        return self._object(await self._send("POST", f"{BATCHES}/{batch_id}/cancel"))

    async def list_since(self, since: datetime) -> list[dict[str, Any]]:
        """Batches of the workspace created at or after ``since``, most recent first."""
        found: list[dict[str, Any]] = []
        params: dict[str, str | int] = {"limit": _PAGE}
        while True:
            page = self._object(await self._send("GET", BATCHES, params=params))
            data = page.get("data")
            batches = [b for b in data if isinstance(b, dict)] if isinstance(data, list) else []
            for batch in batches:
                created = parse_time(batch.get("created_at"))
                if created is not None and created < since:
                    return found
                found.append(batch)
            last = page.get("last_id")
            if not page.get("has_more") or not isinstance(last, str) or not batches:
                return found
            params = {"limit": _PAGE, "after_id": last}

    async def results(self, batch: dict[str, Any]) -> AsyncGenerator[dict[str, Any], None]:
        """The ended batch's result lines, parsed, in the order the API sends them."""
        url = batch.get("results_url")
        path = urlsplit(url).path if isinstance(url, str) and url else ""
        path = path or f"{BATCHES}/{batch['id']}/results"
        try:
            async with self.client.stream("GET", path) as response:
                if response.status_code != 200:
                    raise await http_error(self.api, response, self.scrub)
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    try:
                        item = json.loads(line)
                    except (ValueError, RecursionError) as exc:
                        shown = self.scrub.text(line)[:80]
                        raise RetryableError(
                            "invalid_response", f"a result line is not JSON: {shown!r}"
                        ) from exc
                    if isinstance(item, dict):
                        yield self.scrub.deep(item)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self.client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        if response.status_code != 200:
            raise await http_error(self.api, response, self.scrub)
        return response

    def _object(self, response: httpx.Response) -> dict[str, Any]:
        try:
            payload = response.json()
        except (ValueError, RecursionError) as exc:
            raise RetryableError(
                "invalid_response",
                f"{response.request.method} {response.request.url.path}: the answer is not JSON",
                http_status=response.status_code,
            ) from exc
        if not isinstance(payload, dict):
            raise RetryableError("invalid_response", "the answer is not a JSON object")
        scrubbed: dict[str, Any] = self.scrub.deep(payload)
        return scrubbed

    def _transport_error(self, exc: httpx.HTTPError) -> RetryableError:
        if isinstance(exc, httpx.TimeoutException):
            return RetryableError("timeout", f"{type(exc).__name__}")
        error = RetryableError("connection_error", f"{type(exc).__name__}: {exc}".strip())
        clean_error(error, self.scrub)  # a garbled status line is the server's text
        return error
