"""Simulator: the Message Batches API. Create, retrieve, list, cancel, and results as JSON lines.

A batch's requests are answered when it is created, each exactly as the same request sent alone
without a stream would be (``validate`` → ``faults`` → ``text`` → ``events``), and released on a
schedule: the batch ends ``batch_processing_s`` after its creation, its requests finishing evenly
over that time. A cancel turns the requests not finished by then into ``canceled`` results.
Results come in a shuffled (seeded) order, since the API promises none. The knobs are
``SimConfig.batch_*``; per-request failures are the ``faults`` rules. It must not stream,
rate-limit, or handle the Messages routes (``server`` owns those).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from batchrun.sim.events import message_json
from batchrun.sim.faults import select_fault
from batchrun.sim.responses import HTTP_FAULTS, error_body, error_response, make_id
from batchrun.sim.state import SimState, message_turn
from batchrun.sim.validate import Rejected, check_headers, parse_body, validate

__all__ = ["add_batch_routes"]

BASE = "/v1/messages/batches"
_CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_VERSION = web.RequestKey("batchrun_sim_version", str)


@dataclass
class _Batch:
    """One batch: its requests' answers in order, and when each is due (``loop.time()``)."""

    id: str
    created: float
    created_wall: datetime
    duration: float
    custom_ids: list[str]
    answers: list[dict[str, Any]]
    cancel_at: float | None = None

    @property
    def end(self) -> float:
        due = self.created + self.duration
        return due if self.cancel_at is None else min(due, self.cancel_at)

    def done_at(self, index: int) -> float:
        return self.created + self.duration * (index + 1) / len(self.answers)

    def result(self, index: int, now: float) -> dict[str, Any] | None:
        """Request ``index``'s result at ``now``; ``None`` while it is processing."""
        if self.done_at(index) <= min(now, self.end):
            return self.answers[index]
        return {"type": "canceled"} if now >= self.end else None

    def wall(self, at: float) -> str:
        return _iso(self.created_wall + timedelta(seconds=at - self.created))

    def view(self, now: float, origin: str, *, canceling: bool = False) -> dict[str, Any]:
        """The batch object the API returns."""
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        for index in range(len(self.answers)):
            result = self.result(index, now)
            counts["processing" if result is None else result["type"]] += 1
        ended = now >= self.end and not canceling
        status = "ended" if ended else "canceling" if self.cancel_at is not None else "in_progress"
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "ended_at": self.wall(self.end) if ended else None,
            "created_at": _iso(self.created_wall),
            "expires_at": _iso(self.created_wall + timedelta(hours=24)),
            "archived_at": None,
            "cancel_initiated_at": None if self.cancel_at is None else self.wall(self.cancel_at),
            "results_url": f"{origin}{BASE}/{self.id}/results" if ended else None,
        }


@dataclass
class _Store:
    """Every batch this server has taken, oldest first. Owned by the server's event loop."""

    nonce: str = field(default_factory=lambda: secrets.token_hex(8))
    batches: dict[str, _Batch] = field(default_factory=dict)
    calls: int = 0

    def next_id(self, prefix: str) -> str:
        self.calls += 1
        return make_id(prefix, self.nonce, self.calls)


def add_batch_routes(app: web.Application, state: SimState) -> None:
    """Register the batch endpoints on ``app`` (before its catch-all route)."""
    store = _Store()

    def route(
        handler: Callable[[web.Request, SimState, _Store, str], Awaitable[web.Response]],
    ) -> _Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            resource = request.match_info.route.resource
            state.stats.record_request(resource.canonical if resource else request.path)
            request_id = store.next_id("req_")
            try:
                version = check_headers(request.headers, api_key=state.config.api_key)
                request[_VERSION] = version
                response = await handler(request, state, store, request_id)
            except Rejected as exc:
                response = error_response(exc.status, exc.error_type, exc.message, request_id)
            state.stats.record_status(response.status)
            return response

        return handle

    app.router.add_post(BASE, route(_create))
    app.router.add_get(BASE, route(_list))
    app.router.add_get(BASE + "/{batch_id}", route(_retrieve))
    app.router.add_get(BASE + "/{batch_id}/results", route(_results))
    app.router.add_post(BASE + "/{batch_id}/cancel", route(_cancel))


def _now() -> float:
    return asyncio.get_running_loop().time()


def _iso(when: datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def _origin(request: web.Request) -> str:
    return str(request.url.origin())


def _json(payload: dict[str, Any], request_id: str) -> web.Response:
    return web.json_response(payload, headers={"request-id": request_id})


def _find(store: _Store, request: web.Request) -> _Batch:
    batch = store.batches.get(request.match_info["batch_id"])
    if batch is None:
        raise Rejected(404, "not_found_error", "Message Batch not found")
    return batch


async def _create(
    request: web.Request, state: SimState, store: _Store, request_id: str
) -> web.Response:
    config = state.config
    raw = await request.content.read()  # not request.read(): batches may exceed client_max_size
    if len(raw) > config.batch_max_bytes:
        raise Rejected(
            413, "request_too_large", f"Batch exceeds the maximum of {config.batch_max_bytes} bytes"
        )
    payload = parse_body(raw)
    requests = payload.get("requests") if isinstance(payload, dict) else None
    if not isinstance(requests, list) or not requests:
        raise Rejected(400, "invalid_request_error", "requests: at least one request is required")
    if len(requests) > config.batch_max_requests:
        raise Rejected(
            400,
            "invalid_request_error",
            f"requests: {len(requests)} requests exceed the maximum of "
            f"{config.batch_max_requests} per batch",
        )
    custom_ids: list[str] = []
    for i, item in enumerate(requests):
        custom_id = item.get("custom_id") if isinstance(item, dict) else None
        if not isinstance(custom_id, str) or not _CUSTOM_ID.fullmatch(custom_id):
            raise Rejected(
                400,
                "invalid_request_error",
                f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'",
            )
        if not isinstance(item.get("params"), dict):
            raise Rejected(400, "invalid_request_error", f"requests.{i}.params: Field required")
        custom_ids.append(custom_id)
    if len(set(custom_ids)) != len(custom_ids):
        raise Rejected(400, "invalid_request_error", "requests: custom_id values must be unique")
    batch = _Batch(
        id=store.next_id("msgbatch_"),
        created=_now(),
        created_wall=datetime.now(UTC),
        duration=config.batch_processing_s,
        custom_ids=custom_ids,
        answers=[_answer(state, item["params"], request[_VERSION]) for item in requests],
    )
    store.batches[batch.id] = batch
    return _json(batch.view(batch.created, _origin(request)), request_id)


def _answer(state: SimState, params: dict[str, Any], version: str) -> dict[str, Any]:
    """The result of one request, as if sent alone to /v1/messages without a stream (on the
    batch tier)."""
    config = state.config
    try:
        if params.get("stream") is not None:
            raise Rejected(400, "invalid_request_error", "stream: not supported in batches")
        req = validate(
            "messages",
            params,
            max_tokens_limit=config.max_tokens_limit,
            version=version,
            known_models_only=config.models == "known",
        )
    except Rejected as exc:
        return _errored(exc.error_type, exc.message)
    body = json.dumps(params, ensure_ascii=False, separators=(",", ":")).encode()
    if config.batch_expire_match is not None and config.batch_expire_match.encode() in body:
        return {"type": "expired"}
    digest, attempt = state.attempts.next(BASE, body)
    fault = select_fault(config.faults, seed=config.seed, body=body, digest=digest, attempt=attempt)
    if fault is not None:
        state.stats.record_fault(fault.kind)
        if fault.kind in HTTP_FAULTS or fault.kind == "overloaded_midstream":
            _, error_type, message = HTTP_FAULTS[fault.kind.removesuffix("_midstream")]
            return _errored(error_type, message.format(model=req.model))
        return _errored("api_error", "Internal server error")
    draw = state.attempts.draw(digest, take=True)
    turn = message_turn(state, req, draw, tier="batch")  # as the Messages route's reply
    answer = message_json(req, turn, make_id("msg_", config.seed, req.key, attempt))
    return {"type": "succeeded", "message": answer}


def _errored(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "errored", "error": error_body(error_type, message)}


async def _retrieve(
    request: web.Request, state: SimState, store: _Store, request_id: str
) -> web.Response:
    return _json(_find(store, request).view(_now(), _origin(request)), request_id)


async def _cancel(
    request: web.Request, state: SimState, store: _Store, request_id: str
) -> web.Response:
    batch, now = _find(store, request), _now()
    if now >= batch.end:
        return _json(batch.view(now, _origin(request)), request_id)
    batch.cancel_at = now
    return _json(batch.view(now, _origin(request), canceling=True), request_id)


async def _results(
    request: web.Request, state: SimState, store: _Store, request_id: str
) -> web.Response:
    batch, now = _find(store, request), _now()
    if now < batch.end:
        raise Rejected(
            400,
            "invalid_request_error",
            f"Message Batch {batch.id} has not ended yet; its results are not available",
        )
    order = list(range(len(batch.answers)))
    random.Random(f"{state.config.seed}:{batch.id}").shuffle(order)
    lines = [
        json.dumps({"custom_id": batch.custom_ids[i], "result": batch.result(i, now)}) + "\n"
        for i in order
    ]
    return web.Response(
        text="".join(lines),
        content_type="application/x-jsonl",
        headers={"request-id": request_id},
    )


async def _list(
    request: web.Request, state: SimState, store: _Store, request_id: str
) -> web.Response:
    """Most recent first, paged by ``limit`` (1-1000, default 20), ``after_id``, ``before_id``."""
    try:
        limit = int(request.query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 1000:
        raise Rejected(400, "invalid_request_error", "limit: must be between 1 and 1000")
    ids = list(reversed(store.batches))
    after, before = request.query.get("after_id"), request.query.get("before_id")
    if after is not None:
        ids = ids[ids.index(after) + 1 :] if after in ids else []
        page = ids[:limit]
    elif before is not None:
        ids = ids[: ids.index(before)] if before in ids else []
        page = ids[-limit:]
    else:
        page = ids[:limit]
    now, origin = _now(), _origin(request)
    payload = {
        "data": [store.batches[i].view(now, origin) for i in page],
        "has_more": len(page) < len(ids),
        "first_id": page[0] if page else None,
        "last_id": page[-1] if page else None,
    }
    return _json(payload, request_id)
