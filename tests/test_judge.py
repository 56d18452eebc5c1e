"""The judge requests of model-graded scorers: run as a run of their own through the simulator on
loopback, resumed exactly once (kill -9 included), under the run folder's spend cap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.errors import (
    EXIT_CAPPED,
    EXIT_FATAL,
    JudgingStopped,
    RunFolderError,
    RunLockedError,
)
from batchrun.job.schema import Job, load_job
from batchrun.record.lock import RunLock
from batchrun.record.parquet import read_table
from batchrun.run import run_job
from batchrun.schedule.spend import folder_spent
from batchrun.score.judge import JUDGEMENT_SCHEMA, run_judgements
from batchrun.sim import SimServer
from batchrun.sim.text import offered_answers
from tests.conftest import JobWriter, wait_until

StartSim = Callable[..., SimServer]
ENV = {**os.environ, "ANTHROPIC_API_KEY": "test-key"}
PRICES = {"claude-sonnet-5-5": {"input": 3.0, "output": 15.0}}
GRADES = ("GRADE: C", "GRADE: I")
_NOW = datetime.now(UTC)  # the run folder's {date}: none of these jobs uses it


@pytest.fixture(autouse=True)
def _api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")


def _job(write_job: JobWriter, server: SimServer, **extra: Any) -> Job:
    return load_job(write_job(extra={"endpoint": {"base_url": server.base_url}, **extra}))


def _prompts(
    rows: int, *, variants: tuple[str, ...] = ("default",), mark: str = ""
) -> pl.DataFrame:
    """One prompt per (variant, row): each body different, so the simulator counts each."""
    keys = [(v, f"r{i}", i % 2) for v in variants for i in range(rows)]
    return pl.DataFrame(
        {
            "variant": [k[0] for k in keys],
            "id": [k[1] for k in keys],
            "sample": [k[2] for k in keys],
            "prompt": [
                f"Question {v}/{i}/{s}{mark}\nAnswer: something\nReply GRADE: C or GRADE: I."
                for v, i, s in keys
            ],
        }
    )


def _judgements(run_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(run_dir / "judgements.parquet")


def _judge(job: Job, prompts: pl.DataFrame, *, scorer: str = "judge", **request: Any) -> Any:
    return run_judgements(
        job,
        scorer=scorer,
        request=job.request.derive({"model": "claude-haiku-5-5", **request}),
        prompts=prompts,
        run_dir=job.run_dir(_NOW),
    )


async def test_judgements_land_keyed_by_the_judged_row_and_the_scorer(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """Every prompt is sent once with the judge's request; judgements.parquet has results'
    columns plus scorer, one row per judged (variant, id, sample), and the call returns each
    prompt's status and completion in the prompts' order."""
    server = sim_server()
    job = _job(write_job, server)
    # Ids with the key's separator and beyond ASCII come back as they were.
    prompts = _prompts(5, variants=("sonnet", "haiku-low")).with_columns(id=pl.col("id") + ":x/ü")
    returned = await _judge(job, prompts)

    assert server.stats.requests_by_path.get("/v1/messages", 0) == prompts.height
    assert returned.columns == ["variant", "id", "sample", "status", "completion", "error_message"]
    assert returned.select("variant", "id", "sample").equals(
        prompts.select("variant", "id", "sample")
    )
    assert returned["status"].to_list() == ["ok"] * prompts.height
    table = _judgements(job.run_dir(_NOW))
    assert table.columns == list(JUDGEMENT_SCHEMA)
    assert table.schema == pl.Schema(JUDGEMENT_SCHEMA)
    assert table["scorer"].unique().to_list() == ["judge"]
    assert table["model"].unique().to_list() == ["claude-haiku-5-5"]
    assert sorted(table.select("variant", "id", "sample").rows()) == sorted(
        prompts.select("variant", "id", "sample").rows()
    )
    joined = returned.join(table, on=["variant", "id", "sample"], suffix="_j")
    assert joined["completion"].to_list() == joined["completion_j"].to_list()
    assert table["input_row"].null_count() == table.height  # the judged row's is in results
    assert (table["cost_usd"] > 0).all()


async def test_a_second_call_sends_nothing_and_more_rows_send_only_those(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """Judging the same prompts again sends nothing and changes no judgement; a prompts file
    rewritten with more rows (and one changed prompt) is not refused as another job: only the
    new and the changed prompts are sent, and the changed key keeps its latest judgement."""
    server = sim_server()
    job = _job(write_job, server)
    first = await _judge(job, _prompts(6))
    before = _judgements(job.run_dir(_NOW))
    sent = server.stats.total_requests

    again = await _judge(job, _prompts(6))
    assert server.stats.total_requests == sent
    assert again.equals(first)
    assert _judgements(job.run_dir(_NOW)).equals(before)

    more = _prompts(9).with_columns(
        prompt=pl.when(pl.col("id") == "r0")
        .then(pl.col("prompt").str.replace("something", "something else"))
        .otherwise(pl.col("prompt"))
    )
    await _judge(job, more)
    assert server.stats.total_requests == sent + 3 + 1
    after = _judgements(job.run_dir(_NOW))
    assert after.height == 9
    run_ids = dict(zip(before["id"], before["run_id"], strict=True))
    for ident, run_id in zip(after["id"], after["run_id"], strict=True):
        assert (run_id == run_ids.get(ident)) == (ident in run_ids and ident != "r0"), ident


_CHILD = """
import asyncio, sys
import polars as pl
from batchrun.job.schema import load_job
from batchrun.score.judge import run_judgements
from datetime import UTC, datetime

job = load_job(sys.argv[1])
rows = int(sys.argv[2])
prompts = pl.DataFrame({
    "variant": ["default"] * rows,
    "id": [f"r{i}" for i in range(rows)],
    "sample": [0] * rows,
    "prompt": [f"Row {i}. Reply GRADE: C or GRADE: I." for i in range(rows)],
})
asyncio.run(run_judgements(
    job, scorer="judge", request=job.request, prompts=prompts,
    run_dir=job.run_dir(datetime.now(UTC)),
))
"""


def test_kill_9_mid_judging_then_resume_judges_every_key_exactly_once(
    write_job: JobWriter, sim_server: StartSim, tmp_path: Path
) -> None:
    """A process judging many prompts is killed (-9) once some judgements are checkpointed;
    judging again sends none of the judgements on disk again, and every key is judged once."""
    server = sim_server(ttft_s=0.02, token_interval_s=0.002)
    rows = 150
    path = write_job(extra={"endpoint": {"base_url": server.base_url}})
    parts = tmp_path / "out" / "judge" / "judge" / "parts"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), str(rows)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until(lambda: any(parts.glob("results-*.parquet")), "a judge checkpoint", proc=proc)
    proc.kill()
    proc.communicate(timeout=30)
    on_disk = read_table(tmp_path / "out" / "judge" / "judge", "results")
    assert 0 < on_disk.height < rows, "the kill should land mid-judging"
    kept = dict(zip(on_disk["id"], on_disk["run_id"], strict=True))

    resumed = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(rows)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    table = _judgements(tmp_path / "out")
    assert table.height == rows
    assert table.select("variant", "id", "sample").n_unique() == rows
    assert sorted(table["id"]) == sorted(f"r{i}" for i in range(rows))
    judge_rows = read_table(tmp_path / "out" / "judge" / "judge", "results")
    for ident, run_id in zip(judge_rows["id"], judge_rows["run_id"], strict=True):
        if ident in kept:
            assert run_id == kept[ident], f"{ident} was judged again"
    resent = server.stats.total_requests - rows
    assert server.stats.repeated_requests == resent  # only what was in flight at the kill
    assert 0 <= resent <= 4 * 10


async def test_the_spend_cap_counts_results_and_judgements_together(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """Judging stops (exit 4) before the run folder's spend, results and judgements together,
    passes limits.max_cost_usd; the folder's spend counts the judgements, so the run itself
    then sends nothing under the same cap."""
    server = sim_server()
    generated = await run_job(_job(write_job, server, prices=PRICES))
    assert generated.exit_code == 0
    results_usd = pl.read_parquet(generated.run_dir / "results.parquet")["cost_usd"].sum()
    cap = results_usd + 0.003  # room for a few judge requests, not for 40
    job = _job(write_job, server, limits={"concurrency": 4, "max_cost_usd": cap}, prices=PRICES)

    with pytest.raises(JudgingStopped) as stopped:
        await _judge(job, _prompts(40), model="claude-sonnet-5-5", max_tokens=32)
    assert stopped.value.exit_code == EXIT_CAPPED
    assert "limits.max_cost_usd" in str(stopped.value)
    judged = _judgements(generated.run_dir)
    assert 0 < judged.height < 40
    judge_sent = server.stats.total_requests - 6
    assert judge_sent == judged.height  # nothing sent that was not recorded
    total = results_usd + judged["cost_usd"].sum()
    assert total <= cap
    assert folder_spent(job, generated.run_dir) == pytest.approx(total)

    more = load_job(
        write_job(
            rows=12,
            extra={
                "endpoint": {"base_url": server.base_url},
                "limits": {"concurrency": 4, "max_cost_usd": results_usd + 1e-9},
                "prices": PRICES,
            },
        )
    )
    sent = server.stats.total_requests
    capped = await run_job(more)
    assert capped.exit_code == EXIT_CAPPED
    assert server.stats.total_requests == sent


async def test_a_failing_judge_request_is_an_error_row_not_an_exception(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """A judge request the API refuses (400) comes back as status error with its message, the
    others as ok; judging again does not send it again (a permanent error is done)."""
    server = sim_server(faults=[{"kind": "invalid_request", "rate": 1.0, "match": "r3/"}])
    job = _job(write_job, server)
    prompts = _prompts(6)
    returned = await _judge(job, prompts)
    failed = returned.filter(pl.col("status") == "error")
    assert failed.select("id").to_series().to_list() == ["r3"]
    assert failed["completion"].to_list() == [None]
    assert failed["error_message"][0]
    assert returned.filter(pl.col("status") == "ok").height == 5
    assert _judgements(job.run_dir(_NOW)).filter(pl.col("id") == "r3")["status"].to_list() == [
        "error"
    ]
    sent = server.stats.total_requests
    await _judge(job, prompts)
    assert server.stats.total_requests == sent


async def test_two_scorers_share_judgements_parquet(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """Two model-graded scorers over the same rows: both sets of judgements in one file, one
    row per (variant, id, sample, scorer), each with its own request."""
    server = sim_server()
    job = _job(write_job, server)
    prompts = _prompts(4)
    await _judge(job, prompts, scorer="judge")
    await _judge(job, prompts, scorer="strict.v2", model="claude-sonnet-5-5", max_tokens=32)
    table = _judgements(job.run_dir(_NOW))
    assert table.height == 8
    assert table.select("variant", "id", "sample", "scorer").n_unique() == 8
    models = dict(table.group_by("scorer").agg(pl.col("model").first()).rows())
    assert models == {"judge": "claude-haiku-5-5", "strict.v2": "claude-sonnet-5-5"}
    assert server.stats.total_requests == 8


async def test_judging_runs_while_the_run_holds_its_folder_and_refuses_a_second_scorer(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """The run that holds the run folder's lock may judge (the judges' lock is their own);
    while one process judges, another is refused (exit 75) rather than judging twice."""
    server = sim_server()
    job = _job(write_job, server)
    run_dir = job.run_dir(_NOW)
    run_dir.mkdir(parents=True)
    with RunLock(run_dir):
        returned = await _judge(job, _prompts(2))
    assert returned["status"].to_list() == ["ok", "ok"]
    with RunLock(run_dir / "judge"), pytest.raises(RunLockedError):
        await _judge(job, _prompts(3))


async def test_the_simulator_grades_when_the_prompt_offers_grades(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """A prompt ending "Reply GRADE: C or GRADE: I." gets a sentence and one of the two, drawn
    from the seed: both come up over 30 prompts, and the same seed grades the same."""
    assert offered_answers("Q?\nReply GRADE: C or GRADE: I.") == GRADES
    assert offered_answers("Reply with A, B or C") == ("A", "B", "C")
    assert offered_answers("What is the capital of France?") == ()
    grades = []
    for _ in range(2):
        server = sim_server(seed=7)
        job = _job(write_job, server)
        returned = await _judge(job, _prompts(30), scorer=f"s{len(grades)}")
        completions = returned["completion"].to_list()
        assert all(c.endswith(GRADES) for c in completions), completions
        grades.append([c[-8:] for c in completions])
    assert grades[0] == grades[1]
    assert set(grades[0]) == set(GRADES)


async def test_a_judge_entry_of_the_wrong_kind_is_refused_before_sending(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """judge/ is a folder batchrun keeps in a run folder: a file there is refused, by the
    judging and by the run, before anything is sent."""
    server = sim_server()
    job = _job(write_job, server)
    run_dir = job.run_dir(_NOW)
    run_dir.mkdir(parents=True)
    (run_dir / "judge").write_text("not batchrun's\n")
    with pytest.raises(RunFolderError, match="judge is not a folder"):
        await _judge(job, _prompts(2))
    with pytest.raises(RunFolderError, match="judge is not a folder"):
        await run_job(job)
    assert server.stats.total_requests == 0


async def test_a_job_in_batch_mode_judges_by_streaming(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """The judge of a batch-mode job streams its requests: no batch is made for it."""
    server = sim_server()
    job = _job(write_job, server, request={"mode": "batch"})
    returned = await _judge(job, _prompts(3))
    assert returned["status"].to_list() == ["ok"] * 3
    assert server.stats.requests_by_path == {"/v1/messages": 3}


async def test_a_judge_run_that_aborts_raises_with_its_exit_code(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """An error no retry fixes (a 401) stops judging as it stops a run: JudgingStopped with
    exit 3 and the reason, and judgements.parquet holds what was judged (nothing here)."""
    server = sim_server(faults=[{"kind": "unauthorized", "rate": 1.0}])
    job = _job(write_job, server)
    with pytest.raises(JudgingStopped) as stopped:
        await _judge(job, _prompts(4))
    assert stopped.value.exit_code == EXIT_FATAL
    assert "authentication_error" in str(stopped.value)
    assert "4 prompt(s) not judged" in str(stopped.value)
    assert _judgements(job.run_dir(_NOW)).is_empty()


async def test_judge_requests_are_traced_as_the_runs_are(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """With telemetry.traces: file, the judge run writes its spans (the run's, one per judge
    request with the judge's model) in its own folder's traces.jsonl."""
    server = sim_server()
    job = _job(write_job, server, telemetry={"traces": "file"})
    await _judge(job, _prompts(3))
    lines = (job.run_dir(_NOW) / "judge" / "judge" / "traces.jsonl").read_text().splitlines()
    spans = [
        span
        for line in lines
        for resource in json.loads(line)["resourceSpans"]
        for scope in resource["scopeSpans"]
        for span in scope["spans"]
    ]
    models = [
        a["value"]["stringValue"]
        for span in spans
        for a in span["attributes"]
        if a["key"] == "gen_ai.request.model"
    ]
    assert "batchrun.run" in [span["name"] for span in spans]
    assert models == ["claude-haiku-5-5"] * 3


async def test_fresh_clears_the_judges_and_their_judgements(
    write_job: JobWriter, sim_server: StartSim
) -> None:
    """--fresh starts the folder over: the judge folders and judgements.parquet go too, so an
    earlier run's judge spend no longer counts against the cap and no judgement outlives it."""
    server = sim_server()
    job = _job(write_job, server)
    await _judge(job, _prompts(3))
    run_dir = job.run_dir(_NOW)
    assert (run_dir / "judge").is_dir()
    assert (run_dir / "judgements.parquet").is_file()
    outcome = await run_job(job, fresh=True)
    assert outcome.exit_code == 0
    assert not (run_dir / "judge").exists()
    assert not (run_dir / "judgements.parquet").exists()
