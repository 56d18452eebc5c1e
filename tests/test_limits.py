"""Budgets: bucket arithmetic, learning from headers, the 429 pause, AIMD, and shared stores.

Time is a fake clock that only the injected sleep moves, so nothing here waits for real except
the tests of two processes sharing a SQLite file and the one against the simulator.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from batchrun.apis import APIS
from batchrun.apis.anthropic import classify
from batchrun.call.attempt import stream_attempt
from batchrun.call.endpoint import ApiClient
from batchrun.call.transport import AiohttpTransport
from batchrun.clock import Clock
from batchrun.errors import PermanentError
from batchrun.job.catalogue import lookup
from batchrun.job.sections import LimitsConfig
from batchrun.models import Attempt, Completion, RequestItem
from batchrun.schedule.limits import (
    Adjust,
    BucketSpec,
    BudgetWaitError,
    MemoryStore,
    RateBudget,
    SqliteStore,
    Want,
    make_budget,
    shared_scope,
    state_path,
)
from batchrun.schedule.limits.bucket import Level, adjust_level, refill, take
from batchrun.schedule.limits.headers import read_ratelimit_headers
from tests.conftest import FakeTime, race_two_processes

BODY: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "x" * 40}],
}  # 10 + 3 input tokens by the estimate, 100 output tokens reserved


def _budget(
    t: FakeTime, *, concurrency: int = 8, max_wait_s: float | None = None, **limits: int
) -> RateBudget:
    configured = {k.removesuffix("_per_minute"): v for k, v in limits.items()}
    return RateBudget(
        configured,
        lambda _model: MemoryStore(t),
        cost=APIS["messages"],
        max_concurrency=concurrency,
        clock=t,
        sleep=t.sleep,
        max_wait_s=max_wait_s,
    )


def _ok(
    input_tokens: int = 13, output_tokens: int = 20, headers: dict[str, str] | None = None
) -> Attempt:
    done = Completion("hi", "end_turn", input_tokens=input_tokens, output_tokens=output_tokens)
    return Attempt(
        http_status=200,
        completion=done,
        output_tokens_seen=output_tokens,
        ratelimit_headers=headers or {},
    )


def _failed(status: int, error_type: str, retry_after: float | None = None) -> Attempt:
    error = classify(error_type, "m", http_status=status, retry_after=retry_after)
    return Attempt(http_status=status, error=error)


def _headers(kind: str, limit: int, remaining: int) -> dict[str, str]:
    return {
        f"anthropic-ratelimit-{kind}-limit": str(limit),
        f"anthropic-ratelimit-{kind}-remaining": str(remaining),
        f"anthropic-ratelimit-{kind}-reset": "2030-01-01T00:00:00Z",
    }


# -- bucket arithmetic ---------------------------------------------------------------------


def test_a_bucket_is_one_second_of_its_rate_and_starts_empty() -> None:
    """600 a minute: 10 a second, capacity 10; a new bucket holds nothing, then refills."""
    spec = BucketSpec.per_minute("requests", 600)
    assert (spec.rate, spec.capacity) == (10.0, 10.0)
    assert refill(None, spec, 5.0) == Level(0.0, 5.0)
    assert refill(Level(0.0, 5.0), spec, 5.5) == Level(5.0, 5.5)
    assert refill(Level(0.0, 5.0), spec, 60.0).level == 10.0  # never above capacity


def test_take_is_all_or_nothing_and_names_the_short_bucket() -> None:
    """Short on one bucket: nothing is taken, and the wait is that bucket's."""
    requests = BucketSpec.per_minute("requests", 600)
    output = BucketSpec.per_minute("output_tokens", 6000)  # 100 a second
    states = {"requests": Level(10.0, 0.0), "output_tokens": Level(50.0, 0.0)}
    wants = [Want(requests, 1), Want(output, 80)]
    new, wait, reason = take(states, wants, 0.0)
    assert (wait, reason) == (pytest.approx(0.3), "output_tokens")
    assert new["requests"].level == 10.0
    new, wait, reason = take(states, wants, 0.3)
    assert (wait, reason) == (0.0, None)
    assert new["requests"].level == 9.0
    assert new["output_tokens"].level == pytest.approx(0.0)


def test_an_amount_above_the_burst_waits_for_a_full_bucket_and_leaves_a_debt() -> None:
    """Wanting 250 from a bucket of 100: it goes when full, and the level drops to -150."""
    spec = BucketSpec.per_minute("output_tokens", 6000)
    _, wait, _ = take({"output_tokens": Level(40.0, 0.0)}, [Want(spec, 250)], 0.0)
    assert wait == pytest.approx(0.6)
    new, wait, _ = take({"output_tokens": Level(100.0, 0.0)}, [Want(spec, 250)], 0.0)
    assert wait == 0.0
    assert new["output_tokens"].level == -150.0
    _, wait, _ = take(new, [Want(spec, 1)], 0.0)
    assert wait == pytest.approx(1.51)  # the debt is paid before anyone else goes


def test_over_any_window_no_more_than_burst_plus_rate_is_taken() -> None:
    """Greedy takers over 10 s at 10/s from an empty bucket get exactly 100, never more."""
    spec = BucketSpec.per_minute("requests", 600)
    states: dict[str, Level] = {}
    now, taken = 0.0, 0
    while now <= 10.0:
        new, wait, _ = take(states, [Want(spec, 1)], now)
        states.update(new)
        if wait == 0.0:
            taken += 1
        else:
            now += wait
    assert taken == 100


def test_adjust_gives_back_and_lowers_to_what_is_left() -> None:
    """A give-back is capped at capacity; ``at_most`` only ever lowers; a new bucket is empty."""
    spec = BucketSpec.per_minute("output_tokens", 6000)
    assert adjust_level(Level(10.0, 0.0), Adjust(spec, give=500), 0.0).level == 100.0
    assert adjust_level(Level(90.0, 0.0), Adjust(spec, at_most=20), 0.0).level == 20.0
    assert adjust_level(Level(10.0, 0.0), Adjust(spec, at_most=20), 0.0).level == 10.0
    assert adjust_level(None, Adjust(spec, give=-30), 0.0).level == -30.0


def test_a_clock_that_goes_backwards_refills_nothing() -> None:
    """State written at t=10 and read at t=5: same level, and time does not move back."""
    spec = BucketSpec.per_minute("requests", 600)
    assert refill(Level(3.0, 10.0), spec, 5.0) == Level(3.0, 10.0)


# -- estimates and headers -----------------------------------------------------------------


def test_input_estimate_counts_text_messages_images_and_legacy_prompts() -> None:
    """Four ASCII characters a token, one a non-ASCII character, 3 a message, 1,600 an image."""
    messages, complete = APIS["messages"], APIS["complete"]
    assert messages.estimate_input_tokens(BODY) == 13
    body = {
        "system": "abcd",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "日本語"}, {"type": "image"}]}
        ],
    }
    assert messages.estimate_input_tokens(body) == 1 + 3 + 3 + 1600
    assert complete.estimate_input_tokens({"prompt": "\n\nHuman: hi\n\nAssistant:"}) == 6
    assert messages.output_reservation(BODY) == 100
    assert complete.output_reservation({"max_tokens_to_sample": 7}) == 7
    assert messages.count_tokens_body({**BODY, "stream": True}) == {
        "model": BODY["model"],
        "messages": BODY["messages"],
    }
    assert complete.count_tokens_body({"prompt": "x"}) is None


def test_ratelimit_headers_are_read_per_bucket_and_garbage_is_ignored() -> None:
    """Limits and remaining by bucket; unparsable values and absent buckets are left out."""
    headers = {
        **_headers("requests", 50, 49),
        **_headers("output-tokens", 8000, 0),
        "anthropic-ratelimit-input-tokens-limit": "many",
    }
    views = read_ratelimit_headers(headers)
    assert set(views) == {"requests", "output_tokens"}
    assert (views["requests"].limit, views["requests"].remaining) == (50, 49)
    assert views["output_tokens"].remaining == 0


# -- the budget ----------------------------------------------------------------------------


async def test_without_limits_nothing_waits() -> None:
    """No limit set and none learned: acquire returns at once, whatever the load."""
    t = FakeTime()
    budget = _budget(t, concurrency=100)
    for _ in range(50):
        reservation = await budget.acquire(BODY)
        assert reservation.waited_s == 0.0
    assert t.slept == []
    assert budget.snapshot()["requests_per_minute"] is None


async def test_requests_per_minute_paces_attempts() -> None:
    """60 a minute from an empty bucket: one attempt a second, from the first on."""
    t = FakeTime()
    budget = _budget(t, requests_per_minute=60)
    start = t.now
    for _ in range(5):
        budget.settle(await budget.acquire(BODY), _ok())
    assert t.now - start == pytest.approx(5.0)


async def test_unused_output_tokens_come_back_and_input_is_corrected() -> None:
    """Reserving max_tokens=100 of 6000/min, writing 20: the next one waits for 20, not 100."""
    t = FakeTime()
    budget = _budget(t, output_tokens_per_minute=6000, input_tokens_per_minute=600)
    # Both buckets start empty; the first waits 1 s until they are full (100 output tokens and
    # 10 input tokens, of which it takes 13: a debt of 3).
    first = await budget.acquire(BODY)
    assert first.waited_s == pytest.approx(1.0)
    budget.settle(first, _ok(input_tokens=4, output_tokens=20))  # 9 back: level 6 of 10
    start = t.now
    await budget.acquire(BODY)
    # output: 100 - 100 + 80 = 80 < 100, 0.2 s; input: 10 - 6 = 4 at 10/s, 0.4 s.
    assert t.now - start == pytest.approx(0.4)


async def test_limits_are_learned_from_headers_and_only_ever_tighten_the_job() -> None:
    """An unlimited budget adopts the server's limit; a stricter job setting stays."""
    t = FakeTime()
    budget = _budget(t)
    budget.settle(await budget.acquire(BODY), _ok(headers=_headers("requests", 600, 100)))
    assert budget.snapshot()["requests_per_minute"] == 600
    strict = _budget(t, requests_per_minute=100)
    strict.settle(await strict.acquire(BODY), _ok(headers=_headers("requests", 600, 599)))
    assert strict.snapshot()["requests_per_minute"] == 100


async def test_an_advertised_limit_paces_but_is_reported_only_once_it_binds() -> None:
    """600/min advertised with 599 left: it paces, but snapshot and log say none; once a
    response has less than half left, both say 600, and the log never said anything else."""
    t = FakeTime()
    budget = _budget(t)
    with capture_logs() as logs:
        budget.settle(await budget.acquire(BODY), _ok(headers=_headers("requests", 600, 599)))
        start = t.now
        reservation = await budget.acquire(BODY)
        assert t.now - start == pytest.approx(0.1)  # a new bucket of 10/s starts empty
        assert budget.snapshot()["requests_per_minute"] is None
        budget.settle(reservation, _ok(headers=_headers("requests", 600, 299)))
        assert budget.snapshot()["requests_per_minute"] == 600
    effective = [e for e in logs if e["event"] == "batchrun.limits.effective"]
    assert [e["requests_per_minute"] for e in effective] == [600]
    assert [e["requests"] for e in logs if e["event"] == "batchrun.limits.learned"] == [600]


async def test_a_configured_limit_is_reported_from_the_start() -> None:
    """A job's own limit is in the first effective log, and a looser advertised one changes
    nothing that is reported."""
    t = FakeTime()
    with capture_logs() as logs:
        budget = _budget(t, requests_per_minute=100)
        budget.settle(await budget.acquire(BODY), _ok(headers=_headers("requests", 10**9, 0)))
    effective = [e for e in logs if e["event"] == "batchrun.limits.effective"]
    assert [e["requests_per_minute"] for e in effective] == [100]
    assert budget.snapshot()["input_tokens_per_minute"] is None


async def test_what_the_server_says_is_left_lowers_the_bucket() -> None:
    """The server has 0 requests left: the full local bucket empties, the next waits 1/rate."""
    t = FakeTime()
    budget = _budget(t, requests_per_minute=600)
    reservation = await budget.acquire(BODY)
    t.now += 2.0  # the bucket is full again: 10 requests
    budget.settle(reservation, _ok(headers=_headers("requests", 600, 0)))
    start = t.now
    await budget.acquire(BODY)
    assert t.now - start == pytest.approx(0.1)


async def test_a_429_pauses_the_whole_pool_until_retry_after() -> None:
    """One worker's 429 with retry-after 5: every acquire of its model after it waits out the
    5 s."""
    t = FakeTime()
    budget = _budget(t, max_wait_s=60)
    reservation = await budget.acquire(BODY)
    budget.settle(reservation, _failed(429, "rate_limit_error", retry_after=5))
    assert budget.snapshot()["paused_s"] == 5.0
    start = t.now
    await asyncio.gather(budget.acquire(BODY), budget.acquire(BODY))
    assert t.now - start == pytest.approx(5.0)
    assert budget.snapshot()["rate_limited"] == 1


async def test_after_a_429_the_buckets_resume_empty_not_with_a_burst() -> None:
    """A full bucket of 10 and a 429 with retry-after 1: after the pause, one per 0.1 s."""
    t = FakeTime()
    budget = _budget(t, requests_per_minute=600)
    reservation = await budget.acquire(BODY)
    t.now += 2.0
    budget.settle(reservation, _failed(429, "rate_limit_error", retry_after=1))
    start = t.now
    await budget.acquire(BODY)
    assert t.now - start == pytest.approx(1.1)


async def test_a_429_without_an_error_still_pauses_by_its_headers() -> None:
    """retry-after-ms in the headers is enough; with nothing at all the pause is 1 s."""
    t = FakeTime()
    budget = _budget(t)
    headers = {"retry-after-ms": "2500"}
    budget.settle(await budget.acquire(BODY), Attempt(http_status=429, ratelimit_headers=headers))
    assert budget.snapshot()["paused_s"] == 2.5
    t.now += 3
    budget.settle(await budget.acquire(BODY), Attempt(http_status=429))
    assert budget.snapshot()["paused_s"] == 1.0


async def test_a_pause_longer_than_the_bound_is_refused_not_waited() -> None:
    """retry-after 300 s with max_wait_s 60: acquire raises a permanent error and frees its slot."""
    t = FakeTime()
    budget = _budget(t, concurrency=1, max_wait_s=60)
    budget.settle(await budget.acquire(BODY), _failed(429, "rate_limit_error", retry_after=300))
    with pytest.raises(BudgetWaitError) as caught:
        await budget.acquire(BODY)
    assert isinstance(caught.value, PermanentError)
    assert caught.value.error_type == "rate_limit_wait"
    assert caught.value.retry_after == pytest.approx(300)
    assert t.slept == []
    assert budget.snapshot()["in_flight"] == 0


async def test_a_wait_past_the_deadline_is_refused() -> None:
    """A bucket wait of 1 s with a deadline 0.5 s away: refused at once."""
    t = FakeTime()
    budget = _budget(t, requests_per_minute=60)
    with pytest.raises(BudgetWaitError, match="deadline"):
        await budget.acquire(BODY, deadline=t.now + 0.5)


async def test_settling_twice_and_cancelled_attempts_are_harmless() -> None:
    """A second settle is ignored; an attempt cancelled before any response gives back output."""
    t = FakeTime()
    budget = _budget(t, concurrency=1, output_tokens_per_minute=6000)
    reservation = await budget.acquire(BODY)
    budget.settle(reservation, Attempt())
    budget.settle(reservation, Attempt())
    assert budget.snapshot()["in_flight"] == 0
    start = t.now
    await budget.acquire(BODY)  # the 100 came back: no wait
    assert t.now == start


async def test_a_cancelled_acquire_gives_its_slot_back() -> None:
    """Cancelled while waiting for the bucket: the slot is free for the next request."""
    t = FakeTime()
    budget = RateBudget(
        {"requests": 60},
        lambda _model: MemoryStore(t),
        cost=APIS["messages"],
        max_concurrency=1,
        clock=t,
        sleep=asyncio.sleep,
    )
    task = asyncio.create_task(budget.acquire(BODY))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert budget.snapshot()["in_flight"] == 0


async def test_exact_counts_come_from_the_injected_counter_once_per_body() -> None:
    """With an input limit, count_tokens is asked once per distinct body; failures fall back."""
    t = FakeTime()
    calls: list[dict[str, Any]] = []

    async def count(body: dict[str, Any]) -> int:
        calls.append(body)
        if body["messages"][0]["content"] == "fail":
            raise RuntimeError("boom")
        return 7

    budget = RateBudget(
        {"input_tokens": 600_000},
        lambda _model: MemoryStore(t),
        cost=APIS["messages"],
        max_concurrency=4,
        clock=t,
        sleep=t.sleep,
        count_tokens=count,
    )
    for _ in range(3):
        reservation = await budget.acquire(BODY)
        assert reservation.wants[0].amount == 7
    assert calls == [{"model": BODY["model"], "messages": BODY["messages"]}]
    failing = {**BODY, "messages": [{"role": "user", "content": "fail"}]}
    with capture_logs() as logs:
        reservation = await budget.acquire(failing)
    assert reservation.wants[0].amount == APIS["messages"].estimate_input_tokens(failing)
    assert logs[0]["event"] == "batchrun.limits.count_tokens_failed"


# -- AIMD ----------------------------------------------------------------------------------


async def test_529s_through_the_budget_limit_how_many_attempts_fly() -> None:
    """After a round of 529s at concurrency 4, only 2 attempts hold slots; the third waits."""
    t = FakeTime()
    budget = _budget(t, concurrency=4)
    held = [await budget.acquire(BODY) for _ in range(4)]
    for reservation in held:
        budget.settle(reservation, _failed(529, "overloaded_error"))
    assert budget.snapshot()["concurrency"] == 2
    first, second = await budget.acquire(BODY), await budget.acquire(BODY)
    third = asyncio.create_task(budget.acquire(BODY))
    await asyncio.sleep(0)
    assert not third.done()
    budget.settle(first, _ok())
    assert (await third).slot
    for reservation in (second,):
        budget.settle(reservation, _ok())


# -- stores --------------------------------------------------------------------------------


def test_sqlite_connections_share_buckets_and_the_pause(tmp_path: Path) -> None:
    """Two stores on one file (two processes' connections): one's take is the other's loss."""
    t = FakeTime()
    path = tmp_path / "budget.sqlite3"
    a, b = SqliteStore(path, clock=t, boot=0.0), SqliteStore(path, clock=t, boot=0.0)
    spec = BucketSpec.per_minute("requests", 600)
    t.now += 1.0
    a.adjust([Adjust(spec)])  # creates the bucket, empty at t
    t.now += 1.0  # 10 in it
    assert a.take([Want(spec, 6)]) == (0.0, None)
    wait, reason = b.take([Want(spec, 6)])
    assert (wait, reason) == (pytest.approx(0.2), "requests")
    b.adjust([], pause_s=3.0)
    wait, reason = a.take([Want(spec, 1)])
    assert (wait, reason) == (pytest.approx(3.0), "paused")
    a.close()
    b.close()


def test_sqlite_state_from_another_boot_is_forgotten(tmp_path: Path) -> None:
    """A file written under another boot: its pause and levels mean nothing now."""
    t = FakeTime()
    path = tmp_path / "budget.sqlite3"
    old = SqliteStore(path, clock=t, boot=0.0)
    old.adjust([], pause_s=1e6)
    old.close()
    new = SqliteStore(path, clock=t, boot=10_000.0)
    spec = BucketSpec.per_minute("requests", 600)
    assert new.take([Want(spec, 0)]) == (0.0, None)
    new.close()


_CHILD = """
import json, sys, time
from pathlib import Path
from batchrun.schedule.limits import BucketSpec, SqliteStore, Want
store = SqliteStore(Path(sys.argv[1]))
spec = BucketSpec.per_minute("requests", 3000)  # 50 a second
store.take([Want(BucketSpec("warm-up", 1, 1), 0)])  # open the file, not the race's bucket
print("ready", flush=True)
start = float(sys.stdin.readline())
while time.monotonic() < start:
    time.sleep(0.001)
taken = []
while time.monotonic() < start + 0.6:
    wait, reason = store.take([Want(spec, 1)])
    if reason is None:
        taken.append(time.monotonic())
    else:
        time.sleep(min(wait, 0.005))
print(json.dumps(taken))
"""


def test_two_processes_sharing_a_file_take_no_more_than_the_rate(tmp_path: Path) -> None:
    """Two real processes racing for 50/s for 0.6 s from one file get ~30 between them, not 60."""
    path = tmp_path / "budget.sqlite3"
    taken = race_two_processes(_CHILD, str(path))
    total = sum(len(x) for x in taken)
    # 50/s over the 0.6 s race from an empty bucket is 30 (unshared, each would get 30).
    assert 24 <= total <= 31
    assert all(len(x) >= 5 for x in taken)  # both got a share


async def test_an_unusable_state_dir_falls_back_to_an_unshared_budget(tmp_path: Path) -> None:
    """The state dir is a file: the budget logs it once and goes on in memory."""
    (tmp_path / "state").write_text("not a folder")
    limits = LimitsConfig(requests_per_minute=6000, state_dir=str(tmp_path / "state"))
    budget = make_budget(
        limits, key_fingerprint="ab" * 32, cost=APIS["messages"], max_concurrency=2
    )
    with capture_logs() as logs:
        budget.settle(await budget.acquire(BODY), _ok())
        await budget.acquire(BODY)
    assert [e["event"] for e in logs] == ["batchrun.limits.shared_unavailable"]
    await budget.aclose()


async def test_make_budget_keys_the_shared_file_by_fingerprint_and_model(tmp_path: Path) -> None:
    """Shared: a SQLite file in state_dir named by the fingerprint and the model's catalogue id;
    unshared: no file at all."""
    fingerprint = "0123456789abcdef" * 4
    limits = LimitsConfig(requests_per_minute=60_000, state_dir=str(tmp_path))
    budget = make_budget(
        limits, key_fingerprint=fingerprint, cost=APIS["messages"], max_concurrency=2
    )
    budget.settle(await budget.acquire(BODY), _ok())
    await budget.aclose()
    model = lookup(BODY["model"])
    assert model is not None
    path = state_path(str(tmp_path), shared_scope(fingerprint, model.id))
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no -wal or -shm left after close
    assert path.name != f"budget-{fingerprint[:32]}.sqlite3"  # earlier versions' file
    unshared = LimitsConfig(requests_per_minute=60_000, shared=False, state_dir=str(tmp_path / "x"))
    budget = make_budget(
        unshared, key_fingerprint=fingerprint, cost=APIS["messages"], max_concurrency=2
    )
    budget.settle(await budget.acquire(BODY), _ok())
    await budget.aclose()
    assert not (tmp_path / "x").exists()


async def test_make_budget_waits_through_the_injected_sleep_only() -> None:
    """Given a fake clock and sleep, a budget paces 60 a minute and sits out a 429's pause
    in fake time: 37 s of waits, all recorded, and no real waiting."""
    t = FakeTime()
    limits = LimitsConfig(requests_per_minute=60, shared=False)
    budget = make_budget(
        limits,
        key_fingerprint="f" * 64,
        cost=APIS["messages"],
        max_concurrency=4,
        clock=t,
        sleep=t.sleep,
        max_wait_s=60,
    )
    real_start, start = time.perf_counter(), t.now
    for _ in range(5):
        budget.settle(await budget.acquire(BODY), _ok())
    budget.settle(await budget.acquire(BODY), _failed(429, "rate_limit_error", retry_after=30))
    await budget.acquire(BODY)
    await budget.aclose()
    # Six paced seconds, the 30 s pause, then one more: the bucket resumes empty.
    assert t.now - start == pytest.approx(37.0)
    assert sum(t.slept) == pytest.approx(37.0)
    assert time.perf_counter() - real_start < 1.0


# -- against the simulator -----------------------------------------------------------------


async def _drive(base_url: str, budget: RateBudget, requests: int, workers: int) -> list[int]:
    """Send ``requests`` bodies through ``budget`` with ``workers`` workers; return statuses."""
    statuses: list[int] = []
    clock = Clock()
    queue = list(range(requests))
    async with ApiClient(
        base_url=base_url,
        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"},
        transport=AiohttpTransport(),
    ) as client:

        async def work() -> None:
            while queue:
                n = queue.pop()
                item = RequestItem(str(n), 0, ({"role": "user", "content": f"question {n}"},))
                body = APIS["messages"].body(item, {"model": "claude-sonnet-4-5", "max_tokens": 50})
                body["stream"] = True
                while True:
                    reservation = await budget.acquire(body)
                    attempt = Attempt()
                    try:
                        attempt = await stream_attempt(
                            client, APIS["messages"], body, total_s=10, clock=clock
                        )
                    finally:
                        budget.settle(reservation, attempt)
                    statuses.append(attempt.http_status or 0)
                    if attempt.error is None:
                        break

        await asyncio.gather(*(work() for _ in range(workers)))
    await budget.aclose()
    return statuses


async def test_client_limits_at_the_servers_get_no_429s(sim_server: Any) -> None:
    """Server and client at 1,200 requests a minute: 16 requests, not one 429."""
    server = sim_server(requests_per_minute=1200, rate_limit_burst_s=1)
    budget = _real_budget(requests_per_minute=1200)
    statuses = await _drive(server.base_url, budget, 16, 4)
    assert statuses == [200] * 16


async def test_an_unlimited_client_learns_the_limit_after_its_first_429s(sim_server: Any) -> None:
    """No client limit, 8 workers against 1,200/min and a burst of 5: 429s, then it learns."""
    server = sim_server(requests_per_minute=1200, rate_limit_burst_s=0.25)
    budget = _real_budget()
    statuses = await _drive(server.base_url, budget, 20, 8)
    assert statuses.count(200) == 20
    assert 0 < statuses.count(429) < 10
    assert budget.snapshot()["requests_per_minute"] == 1200


def _real_budget(**limits: int) -> RateBudget:
    config = LimitsConfig(shared=False, **limits)  # type: ignore[arg-type]
    return make_budget(
        config, key_fingerprint="f" * 64, cost=APIS["messages"], max_concurrency=8, max_wait_s=10
    )
