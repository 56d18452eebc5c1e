"""The Redis store against a real redis-server on loopback: arithmetic, sharing, the pause,
the fallback when the server is gone, and the ``limits.redis_url`` job key.

Time is the server's clock, so the buckets here refill slowly (one unit in ~17 minutes) and the
waits they report are checked to a part in a thousand, without sleeping.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from structlog.testing import capture_logs

from batchrun.apis import APIS
from batchrun.errors import JobError
from batchrun.job.catalogue import lookup
from batchrun.job.schema import Job, load_job
from batchrun.job.sections import LimitsConfig
from batchrun.models import Attempt, Completion
from batchrun.schedule.limits import (
    Adjust,
    BucketSpec,
    StoreUnavailable,
    Want,
    make_budget,
    shared_scope,
)
from batchrun.schedule.limits.redis import RedisStore, redis_keys
from tests.conftest import race_two_processes

BODY: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "x" * 40}],
}
SLOW = BucketSpec("requests", rate=0.001, capacity=10.0)  # the server's clock barely moves it
FINGERPRINT = "ab" * 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A fresh redis-server on a free loopback port, in tmp_path, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        yield url
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=10)


def _ok() -> Attempt:
    done = Completion("hi", "end_turn", input_tokens=13, output_tokens=20)
    return Attempt(http_status=200, completion=done, output_tokens_seen=20)


# -- arithmetic against the real server ----------------------------------------------------


def test_a_new_bucket_starts_empty_and_take_is_all_or_nothing(redis_url: str) -> None:
    """An empty bucket: wait 1/rate; two buckets short: nothing taken, the longest wait named."""
    store = RedisStore(redis_url, FINGERPRINT)
    assert store.take([Want(SLOW, 1)]) == (pytest.approx(1000, rel=1e-3), "requests")
    other = BucketSpec("output_tokens", rate=0.001, capacity=10.0)
    store.adjust([Adjust(SLOW, give=10), Adjust(other, give=3)])
    wait, reason = store.take([Want(SLOW, 1), Want(other, 5)])
    assert (wait, reason) == (pytest.approx(2000, rel=1e-3), "output_tokens")
    assert store.take([Want(SLOW, 10)]) == (0.0, None)  # the failed take took nothing
    store.close()


def test_take_and_give_back_follow_the_bucket_arithmetic(redis_url: str) -> None:
    """Give-backs cap at capacity, at_most only lowers, and an oversized take leaves a debt."""
    store = RedisStore(redis_url, FINGERPRINT)
    store.adjust([Adjust(SLOW, give=500)])  # capped: 10
    assert store.take([Want(SLOW, 6)]) == (0.0, None)
    assert store.take([Want(SLOW, 6)]) == (pytest.approx(2000, rel=1e-3), "requests")  # 4 left
    store.adjust([Adjust(SLOW, give=6), Adjust(SLOW, at_most=7)])  # in order: 10, then 7
    assert store.take([Want(SLOW, 8)]) == (pytest.approx(1000, rel=1e-3), "requests")
    store.adjust([Adjust(SLOW, give=3)])  # 10 again
    assert store.take([Want(SLOW, 25)]) == (0.0, None)  # waited for a full bucket: -15 now
    assert store.take([Want(SLOW, 1)]) == (pytest.approx(16_000, rel=1e-3), "requests")
    store.close()


def test_keys_are_namespaced_by_fingerprint_and_expire(redis_url: str) -> None:
    """Keys are batchrun:budget:{fingerprint}:...; each write sets a TTL; a pause outlives it."""
    store = RedisStore(redis_url, FINGERPRINT, ttl_s=60)
    store.take([Want(SLOW, 1)])
    store.adjust([], pause_s=120)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    buckets, paused = redis_keys(FINGERPRINT)
    assert buckets == f"batchrun:budget:{{{FINGERPRINT[:32]}}}:buckets"
    assert sorted(client.keys("*")) == sorted([buckets, paused])
    assert 0 < client.pttl(buckets) <= 60_000
    assert 120_000 < client.pttl(paused) <= 121_000
    client.close()
    store.close()


# -- sharing -------------------------------------------------------------------------------


def test_two_stores_with_one_fingerprint_share_buckets_and_the_429_pause(redis_url: str) -> None:
    """One host's take is another's loss; one's pause holds both; other fingerprints go on."""
    a, b = RedisStore(redis_url, FINGERPRINT), RedisStore(redis_url, FINGERPRINT)
    stranger = RedisStore(redis_url, "cd" * 32)
    a.adjust([Adjust(SLOW, give=10)])
    assert a.take([Want(SLOW, 6)]) == (0.0, None)
    assert b.take([Want(SLOW, 6)]) == (pytest.approx(2000, rel=1e-3), "requests")
    b.adjust([], pause_s=30)
    a.adjust([], pause_s=1)  # a pause only ever grows
    assert a.take([Want(SLOW, 1)]) == (pytest.approx(30, abs=0.5), "paused")
    assert b.take([]) == (pytest.approx(30, abs=0.5), "paused")
    stranger.adjust([Adjust(SLOW, give=10)])
    assert stranger.take([Want(SLOW, 1)]) == (0.0, None)
    for store in (a, b, stranger):
        store.close()


_CHILD = """
import json, sys, time
from batchrun.schedule.limits import BucketSpec, Want
from batchrun.schedule.limits.redis import RedisStore
store = RedisStore(sys.argv[1], "ef" * 32)
spec = BucketSpec.per_minute("requests", 3000)  # 50 a second
store.take([Want(BucketSpec("warm-up", 1, 1), 0)])  # connect, not the race's bucket
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


def test_two_processes_sharing_a_fingerprint_take_no_more_than_the_rate(redis_url: str) -> None:
    """Two real processes racing for 50/s for 0.6 s through Redis get ~30 between them, not 60."""
    taken = race_two_processes(_CHILD, redis_url)
    total = sum(len(x) for x in taken)
    # 50/s over the 0.6 s race from an empty bucket is 30 (unshared, each would get 30).
    assert 24 <= total <= 31
    assert all(len(x) >= 5 for x in taken)  # both got a share


# -- through make_budget -------------------------------------------------------------------


async def test_make_budget_with_redis_url_keeps_the_buckets_in_redis(redis_url: str) -> None:
    """Shared with a redis_url: the budget's buckets are the keys in Redis of the fingerprint
    and the model."""
    limits = LimitsConfig(requests_per_minute=60_000, redis_url=redis_url)
    budget = make_budget(
        limits, key_fingerprint=FINGERPRINT, cost=APIS["messages"], max_concurrency=2
    )
    with capture_logs() as logs:
        budget.settle(await budget.acquire(BODY), _ok())
        await budget.aclose()
    assert "batchrun.limits.shared_unavailable" not in [e["event"] for e in logs]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    model = lookup(BODY["model"])
    assert model is not None
    assert client.hexists(redis_keys(shared_scope(FINGERPRINT, model.id))[0], "level:requests")
    client.close()


async def test_an_unreachable_server_falls_back_to_an_unshared_budget(tmp_path: Path) -> None:
    """Nothing listens at redis_url: the budget logs it once, without the password, and goes on."""
    url = f"redis://:hunter2@127.0.0.1:{_free_port()}/0"
    state = tmp_path / "state"
    limits = LimitsConfig(requests_per_minute=6000, redis_url=url, state_dir=str(state))
    budget = make_budget(
        limits, key_fingerprint=FINGERPRINT, cost=APIS["messages"], max_concurrency=2
    )
    with capture_logs() as logs:
        budget.settle(await budget.acquire(BODY), _ok())
        await budget.acquire(BODY)
        await budget.aclose()
    assert [e["event"] for e in logs] == ["batchrun.limits.shared_unavailable"]
    assert "hunter2" not in logs[0]["error"]
    assert ":***@127.0.0.1" in logs[0]["error"]
    assert not state.exists()  # not the SQLite file either
    store = RedisStore(url, FINGERPRINT, timeout_s=1)
    with pytest.raises(StoreUnavailable):
        store.take([Want(SLOW, 1)])
    store.close()


# -- the job key ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://:hunter2@cache:6379", "must be a redis:// or rediss:// URL"),
        ("redis://", "must be a redis:// or rediss:// URL"),
        ("redis://cache:99999", "the port is not a number"),
        ("redis://cache:6379/0?password=hunter2", "must not have a query"),
        ("redis://:hunter2@cache:6379/zero", "the path must be a database number"),
    ],
)
def test_a_bad_redis_url_is_a_job_error_that_never_shows_it(
    tmp_path: Path, url: str, message: str
) -> None:
    """Wrong scheme, port, query or database: a line-aware error, and the value is not echoed."""
    path = tmp_path / "eval.yaml"
    path.write_text(
        'name: eval\ninput:\n  path: x.csv\n  prompt: "{q}"\nlimits:\n'
        f"  redis_url: {json.dumps(url)}\n",
        encoding="utf-8",
    )
    with pytest.raises(JobError) as caught:
        load_job(path)
    assert "limits.redis_url" in str(caught.value)
    assert message in str(caught.value)
    assert "hunter2" not in str(caught.value)
    plain = tmp_path / "plain.yaml"
    plain.write_text('name: eval\ninput:\n  path: x.csv\n  prompt: "{q}"\n', encoding="utf-8")
    with pytest.raises(JobError) as caught:
        load_job(plain, [f"limits.redis_url={json.dumps(url)}"])
    assert message in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_a_good_redis_url_is_kept_and_its_password_never_reaches_run_json() -> None:
    """redis:// and rediss:// with user:password@ and /db are valid; the dump masks the password."""
    job = Job.model_validate(
        {
            "name": "eval",
            "input": {"path": "x.csv", "prompt": "{q}"},
            "request": {"model": "claude-sonnet-5-5"},
            "limits": {"redis_url": "rediss://batch:hunter2@cache.internal:6380/2"},
        }
    )
    assert job.limits.redis_url == "rediss://batch:hunter2@cache.internal:6380/2"
    assert job.resolved()["limits"]["redis_url"] == "rediss://batch:***@cache.internal:6380/2"
    assert LimitsConfig(redis_url="redis://cache").redis_url == "redis://cache"
    assert LimitsConfig().redis_url is None
