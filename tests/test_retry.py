"""The retry policy: what is retried, how long it waits, what surfaces at the end."""

from __future__ import annotations

import gc
import random

import pytest
from tenacity import AsyncRetrying, RetryCallState, wait_random_exponential

from batchrun.call.retry import Backoff, RetryPolicy
from batchrun.errors import FatalAPIError, PermanentError, RetryableError


class Recorder:
    """An injected sleep that records instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def _policy(
    sleep: Recorder, *, max_attempts: int = 4, initial: float = 1.0, maximum: float = 8.0
) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=max_attempts, initial_backoff_s=initial, max_backoff_s=maximum, sleep=sleep
    )


async def test_retryable_errors_are_retried_until_success() -> None:
    """Two overloads then a success: three attempts, numbered, each told its backoff."""
    sleep = Recorder()
    calls: list[tuple[int, float]] = []

    async def fn(number: int, backoff: float) -> str:
        calls.append((number, backoff))
        if number < 3:
            raise RetryableError("overloaded_error", "Overloaded", http_status=529)
        return "done"

    assert await _policy(sleep).call(fn) == "done"
    assert [n for n, _ in calls] == [1, 2, 3]
    assert [b for _, b in calls] == [0.0, *sleep.waits]


async def test_backoff_grows_with_jitter_inside_the_bounds() -> None:
    """Waits lie in [0, min(max, initial * 2**(n-1))], the first one too."""
    sleep = Recorder()

    async def fn(number: int, backoff: float) -> None:
        raise RetryableError("api_error", "x", http_status=500)

    with pytest.raises(RetryableError):
        await _policy(sleep, max_attempts=6, initial=1.0, maximum=8.0).call(fn)
    assert len(sleep.waits) == 5
    for n, wait in enumerate(sleep.waits, start=1):
        assert 0.0 <= wait <= min(8.0, 2 ** (n - 1))


def test_backoff_widens_from_initial_up_to_max() -> None:
    """The n-th wait lies in [0, min(max, initial * 2**(n-1))]; a count far past the cap
    neither overflows nor leaves the bounds."""
    backoff = Backoff(0.5, 10.0)
    for n in range(1, 12):
        for _ in range(50):
            assert 0.0 <= backoff.wait_s(n) <= min(10.0, 0.5 * 2 ** (n - 1))
    assert 0.0 <= backoff.wait_s(10_000) <= 10.0
    assert len({backoff.wait_s(8) for _ in range(20)}) > 1  # jittered


def test_backoff_draws_what_tenacitys_random_exponential_draws() -> None:
    """The same policy as before it was a function of its own: for one seed, the waits equal
    tenacity's wait_random_exponential(multiplier=initial, max=max), full jitter."""
    ours, theirs = Backoff(0.25, 6.0), wait_random_exponential(multiplier=0.25, max=6.0)
    state = RetryCallState(AsyncRetrying(), None, (), {})
    saved = random.getstate()
    try:
        random.seed(13)
        got = [ours.wait_s(n) for n in range(1, 40)]
        random.seed(13)
        expected = []
        for n in range(1, 40):
            state.attempt_number = n
            expected.append(theirs(state))
    finally:
        random.setstate(saved)
    assert got == expected


@pytest.mark.parametrize(("failures", "ceiling"), [(1, 1.0), (2, 2.0), (4, 8.0), (9, 10.0)])
def test_every_wait_is_uniform_from_zero_to_its_ceiling_the_first_included(
    failures: int, ceiling: float
) -> None:
    """Full jitter: 4,000 draws of the n-th wait fill [0, ceiling] evenly (each tenth holds
    7-13%, the mean is half the ceiling), so clients failed together come back apart."""
    backoff = Backoff(1.0, 10.0)
    rng_state = random.getstate()
    try:
        random.seed(failures)
        waits = [backoff.wait_s(failures) for _ in range(4000)]
    finally:
        random.setstate(rng_state)
    assert all(0.0 <= w <= ceiling for w in waits)
    tenths = [0] * 10
    for w in waits:
        tenths[min(9, int(10 * w / ceiling))] += 1
    assert all(280 <= count <= 520 for count in tenths), tenths
    assert sum(waits) / len(waits) == pytest.approx(ceiling / 2, rel=0.05)


async def test_the_first_retries_of_a_burst_are_spread_not_synchronised() -> None:
    """64 requests overloaded at once: their first waits spread over [0, initial], none equal."""
    first_waits = []
    for _ in range(64):
        sleep = Recorder()

        async def fn(number: int, backoff: float) -> str:
            if number == 1:
                raise RetryableError("overloaded_error", "Overloaded", http_status=529)
            return "done"

        await _policy(sleep, initial=2.0).call(fn)
        first_waits.extend(sleep.waits)
    assert len(set(first_waits)) == 64
    assert min(first_waits) < 0.5
    assert max(first_waits) > 1.5
    assert all(0.0 <= w <= 2.0 for w in first_waits)


async def test_the_policy_waits_as_backoff_does() -> None:
    """RetryPolicy's waits are Backoff's (what batch polling uses): one seed, the same waits."""
    sleep = Recorder()

    async def fn(number: int, backoff: float) -> None:
        raise RetryableError("api_error", "x", http_status=500)

    saved = random.getstate()
    try:
        random.seed(7)
        with pytest.raises(RetryableError):
            await _policy(sleep, max_attempts=6, initial=1.0, maximum=8.0).call(fn)
        random.seed(7)
        expected = [Backoff(1.0, 8.0).wait_s(n) for n in range(1, 6)]
    finally:
        random.setstate(saved)
    assert sleep.waits == expected


async def test_retry_after_is_honoured() -> None:
    """A server's retry-after sets the wait, whatever the backoff would have been."""
    sleep = Recorder()
    asks = iter([3.0, 0.25])

    async def fn(number: int, backoff: float) -> None:
        if number < 3:
            raise RetryableError(
                "rate_limit_error", "slow down", http_status=429, retry_after=next(asks)
            )

    await _policy(sleep, maximum=20.0).call(fn)
    assert sleep.waits == [3.0, 0.25]


async def test_a_retry_after_beyond_max_backoff_ends_the_request() -> None:
    """A retry-after longer than max_backoff_s is not waited for: the error surfaces at once."""
    sleep = Recorder()
    error = RetryableError("rate_limit_error", "slow", http_status=429, retry_after=100.0)

    async def fn(number: int, backoff: float) -> None:
        raise error

    with pytest.raises(RetryableError) as info:
        await _policy(sleep, maximum=20.0).call(fn)
    assert info.value is error
    assert sleep.waits == []


@pytest.mark.parametrize(
    "error",
    [
        PermanentError("invalid_request_error", "bad", http_status=400),
        FatalAPIError("authentication_error", "bad key", http_status=401),
    ],
)
async def test_permanent_and_fatal_errors_are_not_retried(error: Exception) -> None:
    """A 400 or a 401 fails on the first attempt, and the original error surfaces."""
    sleep = Recorder()
    calls = 0

    async def fn(number: int, backoff: float) -> None:
        nonlocal calls
        calls += 1
        raise error

    with pytest.raises(type(error)) as info:
        await _policy(sleep).call(fn)
    assert info.value is error
    assert calls == 1
    assert sleep.waits == []


async def test_the_last_error_surfaces_unwrapped() -> None:
    """After the last attempt the caller gets the last RetryableError itself."""
    sleep = Recorder()
    errors = [RetryableError("overloaded_error", f"try {i}") for i in range(3)]

    async def fn(number: int, backoff: float) -> None:
        raise errors[number - 1]

    with pytest.raises(RetryableError) as info:
        await _policy(sleep, max_attempts=3).call(fn)
    assert info.value is errors[2]


async def test_on_retry_hears_each_retry() -> None:
    """on_retry is called before each wait with the error, the wait and the next attempt."""
    sleep = Recorder()
    heard: list[tuple[str, float, int]] = []

    async def fn(number: int, backoff: float) -> None:
        if number < 3:
            raise RetryableError("overloaded_error", "o", retry_after=0.5)

    policy = RetryPolicy(
        max_attempts=5,
        initial_backoff_s=1,
        max_backoff_s=9,
        sleep=sleep,
        on_retry=lambda e, w, n: heard.append((e.error_type, w, n)),
    )
    await policy.call(fn)
    assert heard == [("overloaded_error", 0.5, 2), ("overloaded_error", 0.5, 3)]


async def test_a_request_leaves_nothing_for_the_cycle_collector() -> None:
    """The retry controller of a request is freed when the request ends: at thousands of
    requests a second, reference cycles kept the collector's slow passes busy."""

    async def fn(number: int, backoff: float) -> str:
        if number < 2:
            raise RetryableError("overloaded_error", "Overloaded", http_status=529)
        return "done"

    policy = _policy(Recorder())
    await policy.call(fn)  # anything made once, on first use, is made now
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):

            async def ok(number: int, backoff: float) -> str:
                return "done"

            assert await policy.call(ok) == "done"
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert unreachable == 0
