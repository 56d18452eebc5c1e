"""Variants, scorers, the spend cap and shards used together: what each piece's own tests do not
meet, found running them as one job (two variants, an ``includes`` scorer and a model judge) on
the simulator."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

from batchrun.errors import JobError
from batchrun.job.schema import load_job
from batchrun.report import report_command
from batchrun.run import run_job
from batchrun.shard import Shard
from batchrun.shard.merge import merge_job
from tests.conftest import JobWriter, no_sleep
from tests.test_shards import SLOW, UNIQUE, batchrun

KEY = ["variant", "id", "sample"]
VARIANTS = [{"name": "sonnet"}, {"name": "haiku", "request": {"model": "claude-haiku-5-5"}}]
JUDGE = {
    "kind": "model",
    "model": "claude-haiku-5-5",
    "max_tokens": 64,
    "prompt": "Q: {question}\nA: {completion}\nReply GRADE: C or GRADE: I",
    "grade_pattern": "GRADE: ([CI])",
    "values": {"C": 1, "I": 0},
}
SCORERS = [
    {"name": "gold", "kind": "includes", "target": "{id}"},
    {"name": "judge", **JUDGE},
]
EVAL: dict[str, Any] = {**UNIQUE, "variants": VARIANTS, "scorers": SCORERS}


def _edit(path: Path, change: dict[str, Any]) -> None:
    """Change top-level keys of the job file ``path``."""
    job = yaml.safe_load(path.read_text(encoding="utf-8"))
    job.update(change)
    path.write_text(yaml.safe_dump(job, sort_keys=False), encoding="utf-8")


def test_local_shards_pass_rerun_changed_on(write_job: JobWriter, tmp_path: Path) -> None:
    """--shards N --local --rerun-changed reaches every shard: a variant's changed prompt is
    sent again in each shard folder and merged, instead of each shard refusing (exit 2)."""
    path = write_job(rows=12, extra=EVAL)
    first = batchrun(path, "--shards", "2", "--local")
    assert first.returncode == 0, first.stderr
    out = tmp_path / "out"
    sent_before = set(pl.read_parquet(out / "results.parquet")["run_id"])
    changed = [VARIANTS[0], {**VARIANTS[1], "input": {"prompt": "Briefly, {id}: {question}"}}]
    _edit(path, {"variants": changed})
    again = batchrun(path, "--shards", "2", "--local", "--rerun-changed")
    assert again.returncode == 0, again.stderr
    rows = pl.read_parquet(out / "results.parquet")
    assert rows.height == 24
    resent = rows.filter(~pl.col("run_id").is_in(list(sent_before)))
    assert sorted(set(resent["variant"])) == ["haiku"]
    assert resent.height == 12
    scores = pl.read_parquet(out / "scores.parquet").join(rows, on=KEY, suffix="_result")
    assert scores.height == 48
    assert scores.filter(pl.col("run_id") != pl.col("run_id_result")).is_empty()  # none stale


async def test_report_on_an_unmerged_folder_shows_the_shards_scores(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """Shards score their own rows at their end; the report on the folder not merged yet reads
    every shard's scores.parquet, as it reads their results."""
    job = load_job(write_job(rows=10, extra=EVAL))
    for k in range(2):
        outcome = await run_job(job.with_shard(Shard(k, 2)), sleep=no_sleep)
        assert outcome.exit_code == 0
    out = io.StringIO()
    assert report_command([tmp_path / "out"], as_json=True, html=False, out=out) == 0
    summary = json.loads(out.getvalue())
    assert summary["state"] == "unmerged"
    scorers = {s["scorer"]: s for s in summary["scores"]["scorers"]}
    assert sorted(scorers) == ["gold", "judge"]
    rows = {v["variant"]: v["rows"] for v in scorers["judge"]["variants"]}
    assert rows == {"sonnet": 10, "haiku": 10}
    # The scores list the variants as the variants table does: the job's order (not by name).
    order = [v["variant"] for v in summary["variants"]]
    assert order == ["sonnet", "haiku"]
    assert [v["variant"] for v in scorers["judge"]["variants"]] == order


async def test_scoring_a_merged_folder_keeps_every_judge(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """The merge carries the shards' judge folders: --rescore of one judge in the merged folder
    sends nothing already judged, and judgements.parquet keeps the other judge's rows."""
    second = {
        **JUDGE,
        "name": "judge2",
        "prompt": "Right? {completion}\nReply GRADE: C or GRADE: I",
    }
    path = write_job(rows=10, extra={**EVAL, "scorers": [*SCORERS, second]})
    job = load_job(path)
    for k in range(2):
        assert (await run_job(job.with_shard(Shard(k, 2)), sleep=no_sleep)).exit_code == 0
    merge_job(job)
    out = tmp_path / "out"
    judged = pl.read_parquet(out / "judgements.parquet")
    assert judged.group_by("scorer").len().sort("scorer").rows() == [("judge", 20), ("judge2", 20)]
    rescored = batchrun("score", path, "--rescore", "judge")
    assert rescored.returncode == 0, rescored.stderr
    again = pl.read_parquet(out / "judgements.parquet")
    assert again.group_by("scorer").len().sort("scorer").rows() == [("judge", 20), ("judge2", 20)]
    assert again.sort("scorer", *KEY).equals(judged.sort("scorer", *KEY))
    attempts = pl.read_parquet(out / "judge" / "judge" / "attempts.parquet")
    assert attempts.height == 20  # the shards' attempts, none sent again
    scores = pl.read_parquet(out / "scores.parquet")
    assert scores.group_by("scorer").len().sort("scorer")["len"].to_list() == [20, 20, 20]


async def test_local_shards_on_a_folder_of_an_unsharded_run(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """--shards N --local on the folder of an unsharded run is refused before any shard sends
    (the merge at the end would refuse it: exit 2 after the whole spend); with --fresh the
    folder is cleared first, scores and judges included, and the shards merge into it."""
    path = write_job(rows=10, extra=EVAL)
    assert (await run_job(load_job(path), sleep=no_sleep)).exit_code == 0
    out = tmp_path / "out"
    refused = batchrun(path, "--shards", "2", "--local")
    assert refused.returncode == 2, refused.stderr
    assert "--fresh" in refused.stderr
    assert not list(out.glob("shard-*"))  # nothing sent
    assert pl.read_parquet(out / "results.parquet").height == 20  # nothing lost
    fresh = batchrun(path, "--shards", "2", "--local", "--fresh")
    assert fresh.returncode == 0, fresh.stderr
    manifest = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert len(manifest["shards"]) == 2
    rows = pl.read_parquet(out / "results.parquet")
    assert rows.height == 20
    assert set(rows["run_id"]) == {s["run_id"] for s in manifest["shards"]}
    assert pl.read_parquet(out / "scores.parquet").height == 40


async def test_merge_refuses_shards_that_never_ran_a_variant_added_since(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """Shards run, then a variant is added to the job: the merge with the new job says which
    shards have requests not run (it merged them as complete, the variant missing); once the
    shards ran it, the merge holds every variant."""
    path = write_job(rows=8, extra=EVAL)
    job = load_job(path)
    for k in range(2):
        assert (await run_job(job.with_shard(Shard(k, 2)), sleep=no_sleep)).exit_code == 0
    _edit(path, {"variants": [*VARIANTS, {"name": "terse", "input": {"system": "One word."}}]})
    grown = load_job(path)
    with pytest.raises(JobError, match=r"shard-0-of-2: \d+ request\(s\) of this job not run"):
        merge_job(grown)
    assert merge_job(grown, partial=True).complete is False
    for k in range(2):
        assert (await run_job(grown.with_shard(Shard(k, 2)), sleep=no_sleep)).exit_code == 0
    merged = merge_job(grown)
    assert merged.complete
    rows = pl.read_parquet(tmp_path / "out" / "results.parquet")
    assert rows.group_by("variant").len().sort("variant")["len"].to_list() == [8, 8, 8]


async def test_score_on_an_unmerged_folder_says_merge_first(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """`batchrun score` on a folder of shards not merged yet says to merge them first, not to
    run the job (which would send every request again, unsharded)."""
    path = write_job(rows=6, extra={**EVAL, "scorers": SCORERS[:1]})
    job = load_job(path)
    for k in range(2):
        assert (await run_job(job.with_shard(Shard(k, 2)), sleep=no_sleep)).exit_code == 0
    for name in ("results", "attempts", "scores"):
        assert not (tmp_path / "out" / f"{name}.parquet").exists()
    refused = batchrun("score", path)
    assert refused.returncode == 2
    assert "batchrun merge" in refused.stderr


def test_validate_counts_the_judges_against_the_cap(write_job: JobWriter) -> None:
    """With a model judge, validate's worst case against limits.max_cost_usd includes the judge
    requests (the cap is the folder's, scoring and all): where the run's own requests fit and
    the judges' do not, it says so, and the run indeed exits 4 in its scoring."""
    dear = [SCORERS[0], {**SCORERS[1], "model": "claude-fable-5-2"}]
    path = write_job(rows=10, extra={**EVAL, "scorers": dear, "limits": {"max_cost_usd": 1000}})
    seen = json.loads(batchrun("validate", path, "--json").stdout)
    assert seen["judge_requests"] == 20
    own = seen["worst_usd"] - seen["judge_usd"]
    cap = f"limits.max_cost_usd={own + 0.001:.6f}"
    told = batchrun("validate", path, "--set", cap)
    assert told.returncode == 0, told.stderr
    assert "the judges' may not" in told.stdout
    ran = batchrun(path, "--set", cap)
    assert ran.returncode == 4, ran.stderr
    assert "the spend cap stopped judging" in ran.stderr


def test_validate_counts_response_cache_hits(write_job: JobWriter, tmp_path: Path) -> None:
    """A third variant in a new folder over the response cache of a 2-variant run: validate
    says what the run then does, only the new variant's requests sent (and scored)."""
    cache = {"cache": {"mode": "read_write", "dir": str(tmp_path / "cache")}}
    path = write_job(rows=6, extra={**EVAL, **cache})
    assert batchrun(path).returncode == 0
    terse = {"name": "terse", "input": {"system": "One word."}}
    _edit(path, {"variants": [*VARIANTS, terse], "output": {"dir": "out2"}})
    before = sorted(p.name for p in (tmp_path / "cache").iterdir())
    seen = json.loads(batchrun("validate", path, "--json").stdout)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == before  # wrote nothing
    assert (seen["to_send"], seen["cache_hits"]) == (6, 12)
    assert {v["name"]: v["to_send"] for v in seen["variants"]} == {
        "sonnet": 0,
        "haiku": 0,
        "terse": 6,
    }
    ran = batchrun(path)
    assert ran.returncode == 0, ran.stderr
    rows = pl.read_parquet(tmp_path / "out2" / "results.parquet")
    sent = rows.filter(~pl.col("cache_hit"))
    assert sent.height == seen["to_send"]
    assert set(sent["variant"]) == {"terse"}


def test_report_of_merged_shards_states_the_concurrency_of_every_shard(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """N local shards each open up to limits.concurrency streams: the merged report's ceiling
    is N times it, not a limit the run seems to have broken."""
    path = write_job(rows=12, extra={**EVAL, "scorers": SCORERS[:1], **SLOW})
    assert batchrun(path, "--shards", "2", "--local").returncode == 0
    out = io.StringIO()
    assert report_command([tmp_path / "out"], as_json=True, html=False, out=out) == 0
    concurrency = json.loads(out.getvalue())["concurrency"]
    assert (concurrency["configured"], concurrency["shards"]) == (4, 2)
    assert concurrency["peak"] <= concurrency["configured"]
    text = io.StringIO()
    assert report_command([tmp_path / "out"], html=False, out=text) == 0
    assert "(limits.concurrency 2 in each of 2 shards)" in text.getvalue()


def test_a_judge_refused_for_good_names_the_scorer_exit_3(write_job: JobWriter) -> None:
    """Generation complete, the judge's model refused (404): exit 3, and the message sends the
    user to the scorer's keys, not only to request.model (which is the generation's)."""
    faults = {"faults": [{"kind": "not_found", "match": "Reply GRADE"}]}
    path = write_job(rows=4, extra={**EVAL, "sim": {"seed": 7, **faults}})
    ran = batchrun(path)
    assert ran.returncode == 3, ran.stderr
    assert "complete: 8 ok, 0 error" in ran.stderr
    assert "scorer judge's keys (model claude-haiku-5-5)" in ran.stderr


def test_a_judge_failing_on_every_row_is_said_at_the_end_of_the_run(
    write_job: JobWriter,
) -> None:
    """Generation complete, every judge request refused (400, a row error): the run still exits
    as its generation did, but a warning names the scorer, how many rows it left without a score
    and why, on the terminal too; the scores hold the nulls with the reason."""
    faults = {"faults": [{"kind": "invalid_request", "match": "Reply GRADE"}]}
    path = write_job(rows=3, extra={**EVAL, "sim": {"seed": 7, **faults}})
    ran = batchrun(path)
    assert ran.returncode == 0, ran.stderr
    warned = [
        json.loads(line)
        for line in ran.stderr.splitlines()
        if '"batchrun.score.scored"' in line and '"warning"' in line
    ]
    assert [(w["scorer"], w["rows"], w["unscored"]) for w in warned] == [("judge", 6, 6)]
    assert warned[0]["error"].startswith("the judge's request failed")
    scores = pl.read_parquet(path.parent / "out" / "scores.parquet")
    assert scores.filter(pl.col("scorer") == "judge")["score"].null_count() == 6


def test_the_closing_line_counts_the_judges_cost(write_job: JobWriter, tmp_path: Path) -> None:
    """The cap counts the judges' requests, and so does the run's closing line: the judges'
    part beside the generation's, as the judge folders' rows priced it."""
    from batchrun.schedule.spend import judges_spent

    path = write_job(rows=3, extra={**EVAL, "sim": {"seed": 7}})
    ran = batchrun(path)
    assert ran.returncode == 0, ran.stderr
    judged = judges_spent(load_job(path), tmp_path / "out")
    assert judged > 0
    assert f"; judges ${judged:,.6f}" in ran.stderr


def test_an_sql_scorer_naming_no_column_is_refused_before_sending(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """An sql scorer's expression over a column neither the input nor the results have is an
    exit 2 from validate and from the run before any request, as a template's column is; not
    an exit 2 at scoring, after the whole spend."""
    sql = {"name": "brief", "kind": "sql", "expression": "output_tokens <= 60 AND nosuch > 1"}
    path = write_job(rows=4, extra={**EVAL, "scorers": [SCORERS[0], sql]})
    seen = batchrun("validate", path)
    assert seen.returncode == 2, seen.stdout
    assert "scorers[1] (brief) uses column 'nosuch'" in seen.stderr
    ran = batchrun(path)
    assert ran.returncode == 2, ran.stderr
    assert "scorers[1] (brief) uses column 'nosuch'" in ran.stderr
    assert not (tmp_path / "out").exists()  # nothing sent
    fixed = {**sql, "expression": "output_tokens <= 60 AND length(question) > 1"}
    _edit(path, {"scorers": [SCORERS[0], fixed]})
    assert batchrun(path).returncode == 0
    scores = pl.read_parquet(tmp_path / "out" / "scores.parquet")
    assert scores.filter(pl.col("scorer") == "brief").height == 8


def test_a_null_cell_names_the_template_once_under_variants(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """A null cell the shared prompt needs is named once ('input.prompt uses it'), not once per
    variant that shares the template; a variant's own template is named beside it. Exit 2,
    nothing sent."""
    path = write_job(rows=3, extra=EVAL)
    data = tmp_path / "data.csv"
    lines = data.read_text(encoding="utf-8").splitlines()
    data.write_text("\n".join([*lines[:2], "r1,", *lines[3:]]) + "\n", encoding="utf-8")
    refused = batchrun(path)
    assert refused.returncode == 2, refused.stderr
    assert "id 'r1': column 'question' is null (input.prompt uses it)" in refused.stderr
    assert not (tmp_path / "out").exists()
    own = {**VARIANTS[1], "input": {"prompt": "Briefly: {question}"}}
    _edit(path, {"variants": [VARIANTS[0], own]})
    told = batchrun("validate", path)
    assert told.returncode == 2
    assert "(variants[1].input.prompt and input.prompt uses it)" in told.stderr


def test_the_merged_line_counts_the_judges_cost(write_job: JobWriter, tmp_path: Path) -> None:
    """Each shard's closing line gives its judges' cost beside the generation's; so does the
    merge's line, with the merged judge folders' cost (the shards' summed), not the generation's
    alone."""
    from batchrun.schedule.spend import judges_spent

    path = write_job(rows=6, extra=EVAL)
    ran = batchrun(path, "--shards", "2", "--local")
    assert ran.returncode == 0, ran.stderr
    job = load_job(path)
    out = tmp_path / "out"
    judged = judges_spent(job, out)
    shards = [judges_spent(job, out / f"shard-{k}-of-2") for k in range(2)]
    assert judged == pytest.approx(sum(shards))
    merged = [line for line in ran.stderr.splitlines() if line.startswith("batchrun: merged:")]
    assert len(merged) == 1
    assert f"; judges ${judged:,.6f}; results in" in merged[0]
    again = batchrun("merge", path)
    assert again.returncode == 0, again.stderr
    assert f"; judges ${judged:,.6f}; results in" in again.stderr


async def test_a_capped_rerun_changed_counts_the_changed_requests_left(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """--rerun-changed under a cap that stops it: the requests left are the changed ones not
    sent again yet (their old rows are still in the folder), not 0 because every key has a
    row; run.json's spend says the same, and the next run with a higher cap sends just them."""
    path = write_job(rows=8, extra={**EVAL, "scorers": SCORERS[:1]})
    first = await run_job(load_job(path), sleep=no_sleep)
    assert first.exit_code == 0
    out = tmp_path / "out"
    spent = pl.read_parquet(out / "results.parquet")["cost_usd"].sum()
    changed = [{**VARIANTS[0], "input": {"prompt": "Briefly, {id}: {question}"}}, VARIANTS[1]]
    _edit(path, {"variants": changed})
    cap = [f"limits.max_cost_usd={spent + 0.002:.6f}"]
    capped = await run_job(load_job(path, cap), sleep=no_sleep, rerun_changed=True)
    assert capped.exit_code == 4
    rows = pl.read_parquet(out / "results.parquet")
    assert rows.height == 16
    resent = rows.filter(pl.col("run_id") != first.run_id).height
    assert 0 < resent < 8
    assert capped.message is not None
    assert f"; {8 - resent} request(s) left, not sent" in capped.message
    manifest = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert manifest["spend"]["rows_left"] == 8 - resent
    done = await run_job(
        load_job(path, ["limits.max_cost_usd=1"]), sleep=no_sleep, rerun_changed=True
    )
    assert done.exit_code == 0
    rows = pl.read_parquet(out / "results.parquet")
    assert rows.filter(pl.col("run_id") == done.run_id).height == 8 - resent
    assert rows.filter(pl.col("run_id") == first.run_id)["variant"].unique().to_list() == ["haiku"]


async def test_a_capped_run_counts_the_judges_cost_in_its_closing_line(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """A run the cap stops after its folder was judged: the closing line gives the judges' cost
    beside the generation's, as a finished run's does, since the spent figure it gives beside
    (the cap's) counts them."""
    from batchrun.schedule.spend import judges_spent

    path = write_job(rows=4, extra=EVAL)
    assert (await run_job(load_job(path), sleep=no_sleep)).exit_code == 0
    judged = judges_spent(load_job(path), tmp_path / "out")
    assert judged > 0
    _edit(path, {"input": {"path": "more.csv", "id_column": "id", "prompt": "{id}: {question}"}})
    rows = (tmp_path / "data.csv").read_text(encoding="utf-8").splitlines()
    more = [*rows, *(f"r{i},Why {i}?" for i in range(4, 40))]
    (tmp_path / "more.csv").write_text("\n".join(more) + "\n", encoding="utf-8")
    spent = pl.read_parquet(tmp_path / "out" / "results.parquet")["cost_usd"].sum()
    capped = await run_job(
        load_job(path, [f"limits.max_cost_usd={spent + judged + 0.002:.6f}"]), sleep=no_sleep
    )
    assert capped.exit_code == 4
    assert capped.cost is not None
    assert capped.cost.endswith(f"; judges ${judged:,.6f}")


async def test_a_merge_after_an_unsharded_run_that_sent_nothing(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """The job run unsharded on a merged folder by mistake, with nothing left to send: the
    folder holds only the shards' rows, so a later merge (and --shards N --local) merges again,
    instead of refusing for 'rows added since' that there are none of; a run that did add a
    row is still refused."""
    path = write_job(rows=8, extra=EVAL)
    job = load_job(path)
    for k in range(2):
        assert (await run_job(job.with_shard(Shard(k, 2)), sleep=no_sleep)).exit_code == 0
    merge_job(job)
    out = tmp_path / "out"
    merged = pl.read_parquet(out / "results.parquet")
    outcome = await run_job(job, sleep=no_sleep)
    assert (outcome.exit_code, outcome.sent) == (0, 0)
    assert "merged_from" in json.loads((out / "run.json").read_text(encoding="utf-8"))
    again = batchrun("merge", path)
    assert again.returncode == 0, again.stderr
    assert pl.read_parquet(out / "results.parquet").sort(KEY).equals(merged.sort(KEY))
    assert len(json.loads((out / "run.json").read_text(encoding="utf-8"))["shards"]) == 2
    assert batchrun(path, "--shards", "2", "--local").returncode == 0
    data = tmp_path / "data.csv"
    data.write_text(data.read_text(encoding="utf-8") + "r8,One more?\n", encoding="utf-8")
    added = await run_job(load_job(path), sleep=no_sleep)
    assert added.sent == 2
    refused = batchrun("merge", path, "--partial")  # the shards have not run the new row
    assert refused.returncode == 2
    assert "run after a merge: rows added since" in refused.stderr
    assert pl.read_parquet(out / "results.parquet").height == 18  # nothing lost


def test_validate_shards_without_an_index_suggests_what_validate_takes(
    write_job: JobWriter,
) -> None:
    """validate --shards N with no JOB_COMPLETION_INDEX: the message offers what validate
    takes (--shard K/N, the variable, no --shards for the whole job), not --local, which
    validate refuses as an unknown argument; the run's message still offers --local."""
    path = write_job(rows=4, extra=EVAL)
    told = batchrun("validate", path, "--shards", "2")  # ENV has no JOB_COMPLETION_INDEX
    assert told.returncode == 2
    assert "--local" not in told.stderr
    assert "leave --shards out to validate the whole job" in told.stderr
    assert batchrun("validate", path).returncode == 0
    ran = batchrun(path, "--shards", "2")
    assert ran.returncode == 2
    assert "run all of them here with --shards 2 --local" in ran.stderr


async def test_the_report_of_unmerged_interrupted_shards_says_so(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """report on a folder of shards not merged, one of them stopped part way: the terminal
    report lists the shards with their states (as report.html's banner does) and the outcome
    is the worst shard's (FAILED for an interrupted one, as for an interrupted run), not a
    WARNING over 'all N rows ok' that hides the rows never run."""
    job = load_job(write_job(rows=10, extra=EVAL))
    assert (await run_job(job.with_shard(Shard(0, 2)), sleep=no_sleep)).exit_code == 0
    assert (await run_job(job.with_shard(Shard(1, 2)), sleep=no_sleep)).exit_code == 0
    folder = tmp_path / "out" / "shard-1-of-2" / "run.json"
    manifest = json.loads(folder.read_text(encoding="utf-8"))
    folder.write_text(json.dumps({**manifest, "status": "interrupted"}), encoding="utf-8")
    text = io.StringIO()
    assert report_command([tmp_path / "out"], html=False, out=text) == 0
    lines = text.getvalue().splitlines()
    assert "(shard-0-of-2 complete, shard-1-of-2 interrupted)" in "\n".join(lines[:4])
    assert next(line for line in lines if line.startswith("outcome")).startswith("outcome   FAILED")
    folder.write_text(json.dumps(manifest), encoding="utf-8")  # both complete: unmerged still
    text = io.StringIO()
    assert report_command([tmp_path / "out"], html=False, out=text) == 0
    assert "outcome   WARNING: all 20 rows ok" in text.getvalue()


async def test_the_cap_counts_rows_replaced_by_rerun_changed(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """Rows --rerun-changed replaces were paid for: the cap keeps counting them (run.json's
    replaced_usd), so the folder's spend, the first answers and the new ones together, stays
    within the cap, and the same cap run again sends nothing more (it sent more each time, the
    replaced rows' cost forgotten once they left results.parquet)."""
    path = write_job(rows=8, extra={**EVAL, "scorers": SCORERS[:1]})
    first = await run_job(load_job(path), sleep=no_sleep)
    out = tmp_path / "out"
    paid = pl.read_parquet(out / "results.parquet")["cost_usd"].sum()
    changed = [{**VARIANTS[0], "input": {"prompt": "Briefly, {id}: {question}"}}, VARIANTS[1]]
    _edit(path, {"variants": changed})
    cap = paid + 0.002
    spent = []
    for _ in range(3):
        ran = await run_job(
            load_job(path, [f"limits.max_cost_usd={cap:.6f}"]), sleep=no_sleep, rerun_changed=True
        )
        assert ran.exit_code == 4
        rows = pl.read_parquet(out / "results.parquet")
        spent.append(paid + rows.filter(pl.col("run_id") != first.run_id)["cost_usd"].sum())
    assert spent[0] <= cap
    assert spent[2] == spent[0]  # the same cap again: nothing more sent
    manifest = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert manifest["spend"]["spent_usd"] == pytest.approx(spent[0], abs=2e-6)
    assert manifest["replaced_usd"] > 0
    # The report's total is what the cap counted: the rows, the judges and the replaced rows.
    summary = io.StringIO()
    assert report_command([out], as_json=True, html=False, out=summary) == 0
    cost = json.loads(summary.getvalue())["cost"]
    assert cost["replaced_usd"] == pytest.approx(manifest["replaced_usd"])
    assert cost["total_usd"] == pytest.approx(manifest["spend"]["spent_usd"], abs=2e-6)
    text = io.StringIO()
    assert report_command([out], html=False, out=text) == 0
    assert "replaced  est. $" in text.getvalue()
    assert report_command([out], out=io.StringIO()) == 0
    assert "replaced rows&#x27; est. cost" in (out / "report.html").read_text(encoding="utf-8")
    fresh = await run_job(load_job(path), sleep=no_sleep, fresh=True)
    assert fresh.exit_code == 0
    assert "replaced_usd" not in json.loads((out / "run.json").read_text(encoding="utf-8"))


def test_a_merge_keeps_what_the_shards_replaced(write_job: JobWriter, tmp_path: Path) -> None:
    """--shards N --local --rerun-changed: each shard folder keeps what its replaced rows cost
    (replaced_usd), and so does the merged run.json, their sum, which the spend cap of the
    merged folder counts."""
    from batchrun.schedule.spend import folder_spent

    path = write_job(rows=8, extra={**EVAL, "scorers": SCORERS[:1]})
    assert batchrun(path, "--shards", "2", "--local").returncode == 0
    out = tmp_path / "out"
    paid = pl.read_parquet(out / "results.parquet")["cost_usd"].sum()
    changed = [{**VARIANTS[0], "input": {"prompt": "Briefly, {id}: {question}"}}, VARIANTS[1]]
    _edit(path, {"variants": changed})
    again = batchrun(path, "--shards", "2", "--local", "--rerun-changed")
    assert again.returncode == 0, again.stderr
    shards = [json.loads((out / f"shard-{k}-of-2" / "run.json").read_text()) for k in range(2)]
    merged = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert merged["replaced_usd"] == pytest.approx(sum(s["replaced_usd"] for s in shards))
    rows = pl.read_parquet(out / "results.parquet")
    old = rows.filter(pl.col("variant") == "haiku")["cost_usd"].sum()
    assert merged["replaced_usd"] == pytest.approx(paid - old, abs=1e-5)  # sonnet's first rows
    job = load_job(path)
    assert folder_spent(job, out) == pytest.approx(
        paid + rows.filter(pl.col("variant") == "sonnet")["cost_usd"].sum(), abs=1e-5
    )


def test_the_report_names_a_judge_the_cap_stopped(write_job: JobWriter, tmp_path: Path) -> None:
    """The cap stops judging (exit 4): scores.parquet has the other scorers only, and the
    report says the judge has no scores yet and how to go on, instead of leaving it out while
    its judges' cost is shown."""
    dear = [SCORERS[0], {**SCORERS[1], "model": "claude-fable-5-2"}]
    path = write_job(rows=6, extra={**EVAL, "scorers": dear})
    seen = json.loads(batchrun("validate", path, "--json").stdout)
    ran = batchrun(path, "--set", f"limits.max_cost_usd={seen['stream_usd'] + 0.0001:.6f}")
    assert ran.returncode == 4, ran.stderr
    assert "the spend cap stopped judging" in ran.stderr
    out = io.StringIO()
    assert report_command([tmp_path / "out"], as_json=True, html=False, out=out) == 0
    scores = json.loads(out.getvalue())["scores"]
    assert [s["scorer"] for s in scores["scorers"]] == ["gold"]
    assert scores["not_scored"] == ["judge"]
    text = io.StringIO()
    assert report_command([tmp_path / "out"], html=True, out=text) == 0
    assert "judge\n  no scores yet:" in text.getvalue()
    assert "batchrun score JOB.yaml" in (tmp_path / "out" / "report.html").read_text()


async def test_the_paired_test_gives_the_same_p_whatever_the_row_order(
    write_job: JobWriter, tmp_path: Path
) -> None:
    """The sign-flip test's seeded draws meet the ids in one order: the report of a folder
    gives the same p-value and interval each time, and after its scores.parquet is written in
    another row order (as a merge or a rescore may write it); they changed from one report to
    the next."""
    extra = {**EVAL, "request": {"samples": 2}}
    job = load_job(write_job(rows=16, extra=extra))
    assert (await run_job(job, sleep=no_sleep)).exit_code == 0
    out = tmp_path / "out"

    def pairs() -> list[dict[str, Any]]:
        text = io.StringIO()
        assert report_command([out], as_json=True, html=False, out=text) == 0
        scorers = json.loads(text.getvalue())["scores"]["scorers"]
        judge = next(s for s in scorers if s["scorer"] == "judge")
        assert judge["pairs"][0]["test"] == "sign-flip permutation"
        return [judge["pairs"], json.loads(text.getvalue())["scores"]["scorers"]]

    first = pairs()
    scores = pl.read_parquet(out / "scores.parquet")
    for seed in range(3):
        scores.sample(fraction=1.0, shuffle=True, seed=seed).write_parquet(out / "scores.parquet")
        assert pairs() == first
