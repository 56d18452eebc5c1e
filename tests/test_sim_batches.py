"""The simulator's Message Batches endpoints: shapes, validation, schedule, cancel, list pages."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from batchrun.sim import SimServer
from tests.conftest import await_until

StartSim = Callable[..., SimServer]
HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}


def _requests(*prompts: str, max_tokens: int = 16) -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"c{i}",
            "params": {
                "model": "claude-sonnet-4-5",
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": prompt}],
            },
        }
        for i, prompt in enumerate(prompts)
    ]


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[[SimServer], httpx.AsyncClient]]:
    clients: list[httpx.AsyncClient] = []

    def make(server: SimServer) -> httpx.AsyncClient:
        clients.append(httpx.AsyncClient(base_url=server.base_url, headers=HEADERS))
        return clients[-1]

    yield make
    for client in clients:
        await client.aclose()


async def _results(client: httpx.AsyncClient, batch_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/messages/batches/{batch_id}/results")
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.text.splitlines()]
    return {line["custom_id"]: line["result"] for line in lines}


async def test_a_batch_answers_as_the_messages_api_would(
    sim_server: StartSim, client_for: Callable[[SimServer], httpx.AsyncClient]
) -> None:
    """Each succeeded result is the non-streaming Messages answer to the same params, served
    on the batch tier."""
    client = client_for(sim_server())
    requests = _requests("Why is the sky blue?", "Name three primes.")
    created = await client.post("/v1/messages/batches", json={"requests": requests})
    batch = created.json()
    assert created.status_code == 200
    assert created.headers["request-id"].startswith("req_")
    assert batch["type"] == "message_batch"
    assert batch["id"].startswith("msgbatch_")
    results = await _results(client, batch["id"])
    for request in requests:
        alone = await client.post("/v1/messages", json=request["params"])
        result = results[request["custom_id"]]
        expected = alone.json()
        assert expected["usage"]["service_tier"] == "standard"
        expected["usage"]["service_tier"] = "batch"
        assert result == {"type": "succeeded", "message": expected}


async def test_the_schedule_counts_and_results_url(
    sim_server: StartSim, client_for: Callable[[SimServer], httpx.AsyncClient]
) -> None:
    """A batch runs batch_processing_s; its results exist once it has ended, at results_url."""
    # Long enough that the early call comes before the end on a loaded host (0.4 s did not).
    client = client_for(sim_server(batch_processing_s=2.0))
    created = await client.post("/v1/messages/batches", json={"requests": _requests("a", "b")})
    batch_id = created.json()["id"]
    early = await client.get(f"/v1/messages/batches/{batch_id}/results")
    assert early.status_code == 400
    assert created.json()["processing_status"] == "in_progress"
    assert created.json()["request_counts"]["processing"] == 2
    assert created.json()["results_url"] is None

    async def batch() -> dict[str, Any]:
        found: dict[str, Any] = (await client.get(f"/v1/messages/batches/{batch_id}")).json()
        return found

    async def has_ended() -> bool:
        return bool((await batch())["processing_status"] == "ended")

    await await_until(has_ended, "the batch's end")
    ended = await batch()
    assert ended["request_counts"] == {
        "processing": 0,
        "succeeded": 2,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    ended_after = datetime.fromisoformat(ended["ended_at"]) - datetime.fromisoformat(
        ended["created_at"]
    )
    assert ended_after == timedelta(seconds=2)
    assert ended["results_url"].endswith(f"/v1/messages/batches/{batch_id}/results")


async def test_faults_and_expiry_per_request(
    sim_server: StartSim, client_for: Callable[[SimServer], httpx.AsyncClient]
) -> None:
    """Faults make requests `errored` per submission; batch_expire_match `expired`."""
    server = sim_server(
        batch_expire_match="stale",
        faults=[{"kind": "overloaded", "match": "busy", "attempts": [1]}],
    )
    client = client_for(server)
    requests = [*_requests("busy", "stale", "fine"), *_requests("x", max_tokens=0)[:1]]
    requests[3]["custom_id"] = "bad"
    first = await client.post("/v1/messages/batches", json={"requests": requests})
    results = await _results(client, first.json()["id"])
    assert results["c0"] == {
        "type": "errored",
        "error": {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    }
    assert results["c1"] == {"type": "expired"}
    assert results["c2"]["type"] == "succeeded"
    assert results["bad"]["error"]["error"]["type"] == "invalid_request_error"
    again = await client.post("/v1/messages/batches", json={"requests": requests[:1]})
    assert (await _results(client, again.json()["id"]))["c0"]["type"] == "succeeded"
    assert server.stats.faults_by_kind == {"overloaded": 1}


async def test_cancel_leaves_finished_requests_and_cancels_the_rest(
    sim_server: StartSim, client_for: Callable[[SimServer], httpx.AsyncClient]
) -> None:
    """A cancel answers `canceling`; then the batch has ended, its unfinished requests canceled."""
    # The requests finish one a second: the cancel comes after the first and, however loaded
    # the host, before the last; how many finished before it is read from the batch.
    client = client_for(sim_server(batch_processing_s=4.0))
    created = await client.post(
        "/v1/messages/batches", json={"requests": _requests("a", "b", "c", "d")}
    )
    batch_id = created.json()["id"]

    async def first_succeeded() -> bool:
        batch = (await client.get(f"/v1/messages/batches/{batch_id}")).json()
        return bool(batch["request_counts"]["succeeded"] >= 1)

    await await_until(first_succeeded, "first request of the batch succeeded")
    canceled = (await client.post(f"/v1/messages/batches/{batch_id}/cancel")).json()
    assert canceled["processing_status"] == "canceling"
    assert canceled["cancel_initiated_at"] is not None
    ended = (await client.get(f"/v1/messages/batches/{batch_id}")).json()
    assert ended["processing_status"] == "ended"
    succeeded = ended["request_counts"]["succeeded"]
    assert 1 <= succeeded < 4
    assert ended["request_counts"]["canceled"] == 4 - succeeded
    results = await _results(client, batch_id)
    assert [results[c]["type"] for c in ("c0", "c1", "c2", "c3")] == ["succeeded"] * succeeded + [
        "canceled"
    ] * (4 - succeeded)


async def test_the_list_is_newest_first_and_paged(
    sim_server: StartSim, client_for: Callable[[SimServer], httpx.AsyncClient]
) -> None:
    """GET /v1/messages/batches pages newest first with limit, after_id and before_id."""
    client = client_for(sim_server())
    ids = []
    for _ in range(5):
        created = await client.post("/v1/messages/batches", json={"requests": _requests("a")})
        ids.append(created.json()["id"])
    newest = list(reversed(ids))
    page = (await client.get("/v1/messages/batches", params={"limit": 2})).json()
    assert [b["id"] for b in page["data"]] == newest[:2]
    assert (page["has_more"], page["first_id"], page["last_id"]) == (True, newest[0], newest[1])
    after = await client.get("/v1/messages/batches", params={"limit": 10, "after_id": newest[1]})
    assert [b["id"] for b in after.json()["data"]] == newest[2:]
    assert after.json()["has_more"] is False
    before = await client.get("/v1/messages/batches", params={"limit": 1, "before_id": newest[2]})
    assert [b["id"] for b in before.json()["data"]] == [newest[1]]


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"requests": []}, 400, "at least one request"),
        ({"requests": [{"custom_id": "a b", "params": {}}]}, 400, "custom_id"),
        ({"requests": [{"custom_id": "x" * 65, "params": {}}]}, 400, "custom_id"),
        ({"requests": [{"custom_id": "a"}]}, 400, "params"),
        ({"requests": _requests("a", "b") + _requests("c")}, 400, "unique"),
        ({"requests": _requests("a", "b", "c", "d")}, 400, "maximum of 3"),
        ({"requests": _requests("a" * 600)}, 413, "maximum of 500 bytes"),
    ],
)
async def test_a_bad_batch_is_refused_whole(
    sim_server: StartSim,
    client_for: Callable[[SimServer], httpx.AsyncClient],
    payload: dict[str, Any],
    status: int,
    message: str,
) -> None:
    """Empty, malformed, duplicate, too many or too large: the API's error, no batch made."""
    client = client_for(sim_server(batch_max_requests=3, batch_max_bytes=500))
    response = await client.post("/v1/messages/batches", json=payload)
    assert response.status_code == status
    assert message in response.json()["error"]["message"]
    assert (await client.get("/v1/messages/batches")).json()["data"] == []


async def test_batches_need_the_key_and_a_known_id(
    sim_server: StartSim, client_for: Callable[[SimServer], httpx.AsyncClient]
) -> None:
    """A wrong key is a 401 on every batch route; an unknown batch is a 404 not_found_error."""
    server = sim_server(api_key="k")
    async with httpx.AsyncClient(
        base_url=server.base_url, headers=HEADERS | {"x-api-key": "no"}
    ) as bad:
        assert (await bad.get("/v1/messages/batches")).status_code == 401
    missing = await client_for(server).get("/v1/messages/batches/msgbatch_nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
