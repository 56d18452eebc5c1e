"""Simulator: the aiohttp application. Routes a request through checks, faults and the model.

One catch-all handler so that every answer, even to an unknown path, has the API's error body
and a ``request-id``. Order: path, auth, version, size, JSON, fields; then (Messages and Complete
only) the rate limits (a 429, charged nothing), the fault rules and the reply. Invalid requests
are never limited or faulted, so a wrong request fails the same way every time. It must not
encode events, decide fault shapes or count rate limits itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from batchrun.sim.batches import add_batch_routes
from batchrun.sim.config import Fault, SimConfig
from batchrun.sim.events import (
    complete_json,
    complete_script,
    message_json,
    messages_script,
)
from batchrun.sim.faults import select_fault
from batchrun.sim.ratelimit import Admission
from batchrun.sim.responses import (
    HTTP_FAULTS,
    error_response,
    fault_response,
    make_id,
    make_limits,
    rate_limit_response,
)
from batchrun.sim.state import STATE, SimState, message_turn, model_reply
from batchrun.sim.stats import SimStats
from batchrun.sim.stream import plan, play
from batchrun.sim.validate import (
    Api,
    GenRequest,
    Rejected,
    check_headers,
    parse_body,
    validate,
)

__all__ = ["create_app", "serve"]

_ROUTES: dict[str, Api] = {
    "/v1/messages": "messages",
    "/v1/complete": "complete",
    "/v1/messages/count_tokens": "count_tokens",
}
_BEFORE_STREAM = frozenset(HTTP_FAULTS) | {"bad_gateway", "spend_limit"}
_SSE_HEADERS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}


@dataclass(frozen=True, slots=True)
class _Call:
    """One HTTP request as the handler sees it."""

    request: web.Request
    state: SimState
    request_id: str
    received: float  # time.perf_counter(), for the stats
    arrived: float  # loop.time(), the origin of the stream's schedule


def create_app(
    config: SimConfig,
    *,
    stats: SimStats | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> web.Application:
    """The simulator as an aiohttp application (one catch-all route). ``clock`` (seconds) times
    prompt-cache entries, so that a test can move time."""
    app = web.Application(client_max_size=config.max_body_bytes)
    app[STATE] = SimState(
        config, stats=stats or SimStats(), limits=make_limits(config), clock=clock
    )
    add_batch_routes(app, app[STATE])
    app.router.add_route("*", "/{tail:.*}", _handle)
    app.on_shutdown.append(_cancel_inflight)
    return app


async def _cancel_inflight(app: web.Application) -> None:
    """Cancel streams and stalls still running, so that shutting down never waits on them."""
    for task in list(app[STATE].inflight):
        task.cancel()


async def _handle(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    received = time.perf_counter()
    arrived = asyncio.get_running_loop().time()
    state.stats.record_request(request.path)
    task = asyncio.current_task()
    if task is not None:
        state.inflight.add(task)
    try:
        too_large = False
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            body, too_large = b"", True
        digest, attempt = state.attempts.next(request.path, body)
        state.stats.record_sighting(attempt)
        request_id = make_id("req_", state.config.seed, digest, attempt)
        call = _Call(request, state, request_id, received, arrived)
        try:
            response = await _route(call, body, too_large, digest, attempt)
        except Rejected as exc:
            response = error_response(exc.status, exc.error_type, exc.message, call.request_id)
        if not response.prepared and not isinstance(response, _Dropped):
            state.stats.record_status(response.status)
        return response
    finally:
        if task is not None:
            state.inflight.discard(task)


async def _route(
    call: _Call, body: bytes, too_large: bool, digest: bytes, attempt: int
) -> web.StreamResponse:
    request, state = call.request, call.state
    config = state.config
    api = _ROUTES.get(request.path)
    if api is None:
        raise Rejected(404, "not_found_error", "Not Found")
    if request.method != "POST":
        raise Rejected(405, "invalid_request_error", f"Method Not Allowed: {request.method}")
    version = check_headers(request.headers, api_key=config.api_key)
    if too_large:
        raise Rejected(
            413, "request_too_large", "Request exceeds the maximum allowed number of bytes."
        )
    payload = parse_body(body)
    req = validate(
        api,
        payload,
        max_tokens_limit=config.max_tokens_limit,
        version=version,
        known_models_only=config.models == "known",
    )
    if api == "count_tokens":
        headers = {"request-id": call.request_id, **state.limits.headers(req.model)}
        return web.json_response({"input_tokens": req.input_tokens}, headers=headers)
    admission = state.limits.admit(
        model=req.model, input_tokens=req.input_tokens, max_tokens=req.max_tokens
    )
    if not admission.ok:
        return rate_limit_response(state.limits, admission, call.request_id)
    try:
        headers = {"request-id": call.request_id, **state.limits.headers(req.model)}
        fault = select_fault(
            config.faults, seed=config.seed, body=body, digest=digest, attempt=attempt
        )
        if fault is not None:
            state.stats.record_fault(fault.kind)
        draw = state.attempts.draw(digest, take=fault is None)
        return await _reply(call, req, fault, headers, admission, attempt, draw)
    finally:
        state.limits.finish(admission)


class _Dropped(web.Response):
    """Returned after the connection was cut; never sent, never counted as a status."""


def _drop(request: web.Request) -> web.StreamResponse:
    if request.transport is not None:
        request.transport.abort()
    return _Dropped(status=499)


async def _reply(
    call: _Call,
    req: GenRequest,
    fault: Fault | None,
    headers: dict[str, str],
    admission: Admission,
    attempt: int,
    draw: int,
) -> web.StreamResponse:
    config, request = call.state.config, call.request
    kind: str | None = fault.kind if fault is not None else None
    if not req.stream and kind is not None:
        # Without a stream there is no middle: mid-stream faults happen before the answer.
        kind = {
            "overloaded_midstream": "overloaded",
            "disconnect_midstream": "disconnect",
            "stall_midstream": "stall",
        }.get(kind, kind)
    if kind == "disconnect":
        return _drop(request)
    start = call.arrived
    if kind == "stall":
        await asyncio.sleep(config.stall_s)
        start = asyncio.get_running_loop().time()
    if fault is not None and kind in _BEFORE_STREAM:
        return fault_response(
            kind,
            model=req.model,
            request_id=call.request_id,
            limits=call.state.limits,
            retry_after_s=fault.retry_after_s,
        )
    prefix = "msg_" if req.api == "messages" else "compl_"
    object_id = make_id(prefix, config.seed, req.key, attempt)
    if req.api == "messages":
        turn = message_turn(call.state, req, draw)
        admission.output_tokens = turn.output_tokens  # what the rate limit is charged in the end
        script = messages_script(req, turn, object_id)
        answer = message_json(req, turn, object_id)
    else:
        reply = model_reply(config, req, draw)
        admission.output_tokens = len(reply.tokens)
        script = complete_script(req, reply)
        answer = complete_json(req, reply, object_id)
    if not req.stream:
        return await _reply_json(call, answer, len(script.deltas), kind, headers)
    steps, ending = plan(
        script,
        fault,
        ttft_s=config.ttft_s,
        interval_s=config.token_interval_s,
        stall_s=config.stall_s,
    )
    response = web.StreamResponse(status=200, headers={**headers, **_SSE_HEADERS})
    await response.prepare(request)
    call.state.stats.record_status(200)

    def first_content(at: float) -> None:
        call.state.stats.record_first_content(call.request_id, call.received, at)

    if not await play(response, steps, start=start, on_first_content=first_content):
        return response
    if ending == "abort":
        return _drop(request)
    await response.write_eof()
    if ending == "complete":
        call.state.stats.record_completed()
    return response


async def _reply_json(
    call: _Call,
    answer: dict[str, object],
    deltas: int,
    kind: str | None,
    headers: dict[str, str],
) -> web.StreamResponse:
    """The non-streaming answer, after as long as its stream of ``deltas`` would have taken.

    ``malformed`` sends a body that is not JSON, ``truncated`` the first half of the JSON.
    """
    config = call.state.config
    delay = config.ttft_s + max(deltas - 1, 0) * config.token_interval_s
    if delay > 0:
        await asyncio.sleep(delay)
    text = json.dumps(answer)
    if kind == "malformed":
        text = "{not json"
    elif kind == "truncated":
        text = text[: len(text) // 2]
    return web.Response(text=text, content_type="application/json", headers=headers)


async def serve(config: SimConfig, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run the simulator on ``host:port`` until cancelled (``batchrun sim``)."""
    runner = web.AppRunner(
        create_app(config), handler_cancellation=True, access_log=None, shutdown_timeout=1.0
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
