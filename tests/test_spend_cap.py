"""The hard spend cap (limits.max_cost_usd): never passed, exit 4, resume, batch mode, validate."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.apis import APIS
from batchrun.cli import main
from batchrun.errors import EXIT_CAPPED, JobError
from batchrun.job.prices import ModelPrice
from batchrun.job.schema import Job, load_job
from batchrun.load.inputs import iter_batches
from batchrun.models import RunStatus
from batchrun.run import RunOutcome, run_job
from batchrun.schedule.spend import SpendLedger
from batchrun.sim import SimServer
from tests.conftest import JobWriter, run_cli
from tests.test_batch import _batches, _sizes

StartSim = Callable[..., SimServer]
PRICES = {"claude-sonnet-5-5": {"input": 3.0, "output": 15.0}}
ROWS = 20
# Each request's worst case is ~$0.001 (64 output tokens at $15/M); the simulator writes 8-64.
CAP = 0.004


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")


def _job_file(write_job: JobWriter, server: SimServer, cap: float | None, **extra: Any) -> Path:
    base: dict[str, Any] = {
        "endpoint": {"base_url": server.base_url},
        "input": {"prompt": "{id}: {question}"},
        "limits": {"max_cost_usd": cap},
        "prices": PRICES,
    }
    for key, value in extra.items():
        base[key] = {**base.get(key, {}), **value}
    return write_job(rows=ROWS, extra=base)


def _results(outcome: RunOutcome) -> pl.DataFrame:
    return pl.read_parquet(outcome.run_dir / "results.parquet")


def _spend(outcome: RunOutcome) -> dict[str, Any]:
    spend: dict[str, Any] = json.loads((outcome.run_dir / "run.json").read_text())["spend"]
    return spend


def _messages_sent(server: SimServer) -> int:
    return server.stats.requests_by_path.get("/v1/messages", 0)


async def test_the_cap_is_never_passed_and_the_run_exits_4(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """A run whose input costs more than the cap stops before passing it: the sum of cost_usd
    stays within the cap, the run exits 4 as capped, and run.json says spent, cap, rows left."""
    server = sim_server()
    outcome = await run_job(load_job(_job_file(write_job, server, CAP)))
    results = _results(outcome)
    assert outcome.exit_code == EXIT_CAPPED == 4
    assert outcome.status == RunStatus.CAPPED
    assert 0 < results.height < ROWS
    assert results["status"].unique().to_list() == ["ok"]
    spent = results["cost_usd"].sum()
    assert spent <= CAP
    assert _messages_sent(server) == results.height  # nothing sent that was not recorded
    spend = _spend(outcome)
    assert spend == {
        "cap_usd": CAP,
        "spent_usd": pytest.approx(spent, abs=1e-6),
        "rows_left": ROWS - results.height,
    }
    assert json.loads((outcome.run_dir / "run.json").read_text())["status"] == "capped"
    assert outcome.message is not None
    assert f"{ROWS - results.height} request(s) left" in outcome.message
    assert "$0.004000" in outcome.message
    # Rows go out in order, and the first one left would have passed the cap at its worst.
    assert sorted(results["input_row"].to_list()) == list(range(results.height))
    job = load_job(_job_file(write_job, server, CAP))
    assert spent + _worst(job)[results.height] > CAP


async def test_the_same_cap_sends_nothing_and_a_higher_one_finishes(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """Run again with the same cap: exit 4 at once with the same summary, nothing sent. With a
    higher cap the run resumes and finishes every row, the folder's total within that cap."""
    server = sim_server()
    first = await run_job(load_job(_job_file(write_job, server, CAP)))
    assert first.exit_code == EXIT_CAPPED
    sent = server.stats.total_requests

    again = await run_job(load_job(_job_file(write_job, server, CAP)))
    assert again.exit_code == EXIT_CAPPED
    assert server.stats.total_requests == sent
    assert _spend(again) == _spend(first)
    assert again.message == first.message

    higher = 1.0
    done = await run_job(load_job(_job_file(write_job, server, higher)))
    results = _results(done)
    assert done.exit_code == 0
    assert done.status == RunStatus.COMPLETE
    assert results.height == ROWS
    assert results["id"].n_unique() == ROWS  # resumed, never duplicated
    assert results["cost_usd"].sum() <= higher
    assert _spend(done)["rows_left"] == 0


async def test_concurrent_requests_never_pass_the_cap_together(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """With many streams open at once, in-flight holds count: a cap a little above one
    request's worst case lets few through, and their sum stays within it."""
    server = sim_server()
    cap = 0.0025
    job = load_job(_job_file(write_job, server, cap, limits={"concurrency": 16}))
    outcome = await run_job(job)
    results = _results(outcome)
    assert outcome.exit_code == EXIT_CAPPED
    assert 1 <= results.height < ROWS
    assert results["cost_usd"].sum() <= cap


def test_a_model_without_a_price_is_refused_under_a_cap(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """A cap with a model that has no price is an error when the job is read (exit 2), naming
    the model and prices:; without the cap the same job is valid."""
    extra: dict[str, Any] = {
        "request": {"model": "claude-nonesuch-1"},
        "limits": {"max_cost_usd": 1.0},
    }
    with pytest.raises(JobError) as caught:
        load_job(write_job(rows=2, extra=extra))
    assert "claude-nonesuch-1" in str(caught.value)
    assert "prices:" in str(caught.value)
    assert "max_cost_usd" in str(caught.value)
    run = run_cli(write_job(rows=2, extra=extra))
    assert run.returncode == 2, run.stderr
    assert "claude-nonesuch-1" in run.stderr
    extra["limits"] = {"max_cost_usd": None}
    assert load_job(write_job(rows=2, extra=extra)).limits.max_cost_usd is None


def test_the_cap_must_be_positive(write_job: JobWriter) -> None:
    """max_cost_usd: 0 or below is refused."""
    with pytest.raises(JobError, match="max_cost_usd"):
        load_job(write_job(rows=2, extra={"limits": {"max_cost_usd": 0}}))


async def test_batch_mode_submits_only_what_fits_at_batch_prices(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """In batch mode the requests whose worst case at batch prices (half) fits are submitted;
    the rest wait. The run exits 4; a higher cap submits the rest."""
    server = sim_server()
    extra = {"request": {"mode": "batch"}}
    outcome = await run_job(load_job(_job_file(write_job, server, CAP, **extra)))
    results = _results(outcome)
    worst = _worst(load_job(_job_file(write_job, server, CAP, **extra)))
    fits = next(k for k in range(ROWS + 1) if k == ROWS or sum(worst[: k + 1]) > CAP)
    assert outcome.exit_code == EXIT_CAPPED
    assert outcome.status == RunStatus.CAPPED
    assert 0 < fits < ROWS
    assert sum(_sizes(await _batches(server))) == fits  # submitted: what fits, no more
    assert sorted(results["input_row"].to_list()) == list(range(fits))
    assert results["cost_usd"].sum() <= CAP
    assert _spend(outcome) == {
        "cap_usd": CAP,
        "spent_usd": pytest.approx(results["cost_usd"].sum(), abs=1e-6),
        "rows_left": ROWS - results.height,
    }

    done = await run_job(load_job(_job_file(write_job, server, 1.0, **extra)))
    assert done.exit_code == 0
    assert _results(done).height == ROWS


def _worst(job: Job) -> list[float]:
    """Every request's worst case, in order, at the job's mode's prices."""
    ledger = SpendLedger.for_job(job, on_capped=lambda: None)
    api = job.request.api_spec
    return [
        ledger.worst_case(api, api.body(item, job.request.params))
        for batch in iter_batches(job)
        for item in batch
    ]


def test_validate_shows_the_worst_case_against_the_cap(
    write_job: JobWriter, sim_server: StartSim, capsys: pytest.CaptureFixture[str]
) -> None:
    """validate prints the whole job's worst case against the cap and after about how many
    rows the run would stop; within the cap it says every request fits."""
    server = sim_server()
    code = main(["validate", str(_job_file(write_job, server, CAP))])
    out = capsys.readouterr().out
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("spend cap:"))
    worst = _worst(load_job(_job_file(write_job, server, CAP)))
    fits = next(k for k in range(ROWS) if sum(worst[: k + 1]) > CAP)
    assert fits == 4  # each about $0.001 at its worst
    assert f"worst case ${sum(worst):.4f} against the cap $0.0040" in line
    assert "the run would stop after about 4 rows (of 20 requests to send" in line
    assert server.stats.total_requests == 0

    main(["validate", str(_job_file(write_job, server, 1.0)), "--json"])
    seen = json.loads(capsys.readouterr().out)
    assert seen["cap_usd"] == 1.0
    assert seen["fit_requests"] == ROWS
    assert 0.019 < seen["worst_usd"] < 0.022
    main(["validate", str(_job_file(write_job, server, 1.0))])
    assert "every request fits" in capsys.readouterr().out


async def test_a_request_waits_for_holds_in_flight_then_the_cap_stops() -> None:
    """The ledger: a request that does not fit waits while others hold; once none is in flight
    and it still does not fit, the ledger is capped (once) and it is refused."""
    capped: list[bool] = []
    ledger = SpendLedger(
        cap_usd=0.0020,
        rates=ModelPrice(input=0.0, output=10.0).rates(),
        on_capped=lambda: capped.append(True),
    )
    api = APIS["messages"]
    body = {"messages": [], "max_tokens": 100}  # $0.001 at its worst
    first = await ledger.reserve(api, body)
    second = await ledger.reserve(api, body)
    assert first is not None
    assert second is not None
    third = asyncio.create_task(ledger.reserve(api, body))
    await asyncio.sleep(0)
    assert not third.done()  # waits: two holds fill the cap
    ledger.settle(first, 0.0005)  # $0.0005 returns
    await asyncio.sleep(0)
    assert not third.done()  # 0.0005 + 0.001 + 0.001 > 0.002: still waiting
    ledger.settle(second, 0.0005)
    held = await third
    assert held is not None
    assert ledger.spent_usd == pytest.approx(0.001)
    ledger.settle(held, 0.0008)
    assert await ledger.reserve(api, body) is None  # 0.0018 + 0.001 > cap, nothing in flight
    assert capped == [True]
    assert await ledger.reserve(api, body) is None
    assert capped == [True]


def test_the_command_line_exits_4_with_the_summary(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """`batchrun JOB` under a cap it reaches exits 4, its closing lines saying capped, what
    was spent against the cap and how many requests are left."""
    server = sim_server()
    run = run_cli(_job_file(write_job, server, CAP))
    assert run.returncode == 4, run.stderr
    assert "batchrun: capped: 4 ok, 0 error" in run.stderr
    assert "of the cap $0.004000 (limits.max_cost_usd); 16 request(s) left" in run.stderr


async def test_with_a_prompt_cache_the_cap_holds_at_cache_write_prices(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """With prompt_cache, input is held at the cache-write rate: the sum of cost_usd, cache
    writes and reads included, stays within the cap."""
    server = sim_server()
    system = "You are a careful assistant. " * 200  # long enough to be cached
    extra = {"request": {"prompt_cache": "5m"}, "input": {"system": system}}
    outcome = await run_job(load_job(_job_file(write_job, server, 0.02, **extra)))
    results = _results(outcome)
    assert outcome.exit_code == EXIT_CAPPED
    assert results["cache_read_input_tokens"].sum() > 0
    assert results["cost_usd"].sum() <= 0.02


async def test_a_waiting_request_gives_up_when_the_run_stops() -> None:
    """A request waiting for holds to return does not start once the run is stopping (a
    signal): it is refused without capping the ledger."""
    stopping: list[bool] = []
    ledger = SpendLedger(
        cap_usd=0.0015,
        rates=ModelPrice(input=0.0, output=10.0).rates(),
        halted=lambda: bool(stopping),
    )
    api = APIS["messages"]
    body = {"messages": [], "max_tokens": 100}  # $0.001 at its worst
    first = await ledger.reserve(api, body)
    assert first is not None
    waiting = asyncio.create_task(ledger.reserve(api, body))
    await asyncio.sleep(0)
    assert not waiting.done()
    stopping.append(True)
    ledger.settle(first, 0.0001)  # it would fit now
    assert await waiting is None
    assert not ledger.capped


async def test_response_cache_hits_cost_the_cap_nothing(
    write_job: JobWriter, sim_server: StartSim, tmp_path: Path
) -> None:
    """A run answered from the response cache passes under a cap too small for one request:
    hits are looked up before the cap reserves, send nothing and cost nothing."""
    server = sim_server()
    cache = {"mode": "read_write", "dir": str(tmp_path / "cache")}
    first = await run_job(load_job(_job_file(write_job, server, None, cache=cache)))
    assert first.exit_code == 0
    sent = _messages_sent(server)
    assert sent == ROWS
    again = _job_file(write_job, server, 0.0001, cache=cache, output={"dir": "again"})
    outcome = await run_job(load_job(again))
    results = _results(outcome)
    assert outcome.exit_code == 0, outcome.message
    assert results.height == ROWS
    assert results["cache_hit"].all()
    assert results["cost_usd"].sum() == 0
    assert _messages_sent(server) == sent
