"""`batchrun report` on a run of several variants: side by side, keyed on (variant, id, sample),
with response cache hits counted and left out of every timing; folders before variants."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from batchrun.job.schema import load_job
from batchrun.record.schema import ATTEMPT_SCHEMA, RESULT_SCHEMA
from batchrun.report import compare_runs, load_run, summarize
from batchrun.run import run_job
from tests.conftest import JobWriter, no_sleep

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RESULTS = {**RESULT_SCHEMA, "variant": pl.String}
ATTEMPTS = {**ATTEMPT_SCHEMA, "variant": pl.String}
TOPICS = {f"r{i}": "maths" if i < 3 else "history" for i in range(6)}


def _row(variant: str, i: int, **values: Any) -> dict[str, Any]:
    start = T0 + timedelta(seconds=i)
    e2e = values.get("e2e_s") or 0.0
    return {
        **dict.fromkeys(RESULTS),
        "run_id": "run1",
        "variant": variant,
        "id": f"r{i}",
        "sample": 0,
        "api": "messages",
        "attempts": 1,
        "started_at": start,
        "finished_at": start + timedelta(seconds=e2e),
        "cache_hit": False,
        **values,
    }


def _ok(variant: str, model: str, i: int, ttft: float, e2e: float, out: int, **values: Any) -> Any:
    return _row(
        variant,
        i,
        model=model,
        status="ok",
        stop_reason="end_turn",
        completion=f"{variant} says {i}",
        input_tokens=10,
        output_tokens=out,
        ttft_s=ttft,
        e2e_s=e2e,
        output_tokens_per_s=out / e2e,
        **values,
    )


def variant_rows() -> list[dict[str, Any]]:
    """Two variants over six input rows. ``sonnet``: four rows sent, two response cache hits
    whose timings (another run's) are far slower; ``haiku``: four ok, two errors."""
    sonnet = "claude-sonnet-5-5"
    haiku = "claude-haiku-5-5"
    costs = (0.5, 0.25, 0.125, 0.125)  # exact in binary: the sum is $1.00, not $0.9999…
    rows = [
        _ok("sonnet", sonnet, i, 0.1 * (i + 1), float(i + 1), 20 + 10 * i, cost_usd=costs[i])
        for i in range(4)
    ]
    rows[0]["cache_read_input_tokens"] = 5
    for row, ttft_text in zip(rows, (0.15, 0.25, 0.35, 0.45), strict=True):
        row["ttft_text_s"] = ttft_text
    hit = {"cost_usd": 0.0, "cache_hit": True, "attempts": 0}
    rows += [_ok("sonnet", sonnet, i, 9.0, 100.0, 60, **hit) for i in (4, 5)]
    for row in rows[4:]:  # a hit is recorded at one instant: nothing was sent
        row["finished_at"] = row["started_at"]
    rows += [
        _ok("haiku", haiku, i, 0.05 + 0.01 * i, 0.5 + 0.1 * i, 5 + i, cost_usd=0.0001)
        for i in range(4)
    ]
    rows += [
        _row(
            "haiku",
            i,
            model=haiku,
            status="error",
            error_type=kind,
            error_message=f"{kind} on row {i}",
            attempts=3,
        )
        for i, kind in ((4, "overloaded_error"), (5, "invalid_request_error"))
    ]
    return rows


def write_folder(run_dir: Path, rows: list[dict[str, Any]], *, variant: str = "column") -> Path:
    """results, attempts and run.json; ``variant``: ``column`` as given, ``none`` without the
    column (a folder written before variants), ``null`` with the column but no values."""
    run_dir.mkdir(parents=True, exist_ok=True)
    results = pl.DataFrame(rows, schema=RESULTS, orient="row")
    attempts = pl.DataFrame(
        [
            {
                **dict.fromkeys(ATTEMPTS),
                **{k: r[k] for k in ("run_id", "variant", "id", "sample")},
                "attempt": n,
                "outcome": "ok"
                if r["status"] == "ok" and n == r["attempts"]
                else "overloaded_error",
                "started_at": r["started_at"],
                "finished_at": r["finished_at"],
            }
            for r in rows
            for n in range(1, r["attempts"] + 1)
        ],
        schema=ATTEMPTS,
        orient="row",
    )
    if variant == "none":
        results, attempts = results.drop("variant"), attempts.drop("variant")
    elif variant == "null":
        results = results.with_columns(variant=pl.lit(None, dtype=pl.String))
        attempts = attempts.with_columns(variant=pl.lit(None, dtype=pl.String))
    results.write_parquet(run_dir / "results.parquet")
    attempts.write_parquet(run_dir / "attempts.parquet")
    (run_dir.parent / "data.csv").write_text(
        "id,topic\n" + "".join(f"{k},{v}\n" for k, v in TOPICS.items()), encoding="utf-8"
    )
    job = {
        "name": "compare",
        "job_file": str(run_dir.parent / "job.yaml"),
        "input": {"path": "data.csv", "id_column": "id"},
        # the job's order, not the alphabet's: the report keeps it
        "variants": [{"name": "sonnet"}, {"name": "haiku"}],
    }
    manifest = {"status": "complete", "job": job}
    (run_dir / "run.json").write_text(json.dumps(manifest), encoding="utf-8")
    return run_dir


def _quantile(values: list[float], q: float) -> float | None:
    """Linear interpolation between the closest ranks, by hand."""
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _sum(values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def expected(rows: list[dict[str, Any]], variant: str) -> dict[str, Any]:
    """What the report must say of one variant, computed from the literal rows."""
    mine = [r for r in rows if r["variant"] == variant]
    sent = [r for r in mine if not r["cache_hit"]]
    ok = sum(r["status"] == "ok" for r in mine)

    def timing(column: str) -> dict[str, Any]:
        values = [r[column] for r in sent if r[column] is not None]
        return {
            "count": len(values),
            **{f"p{round(q * 100)}": _quantile(values, q) for q in (0.5, 0.9, 0.99)},
        }

    return {
        "variant": variant,
        "models": sorted({r["model"] for r in mine}),
        "rows": len(mine),
        "ok": ok,
        "error": len(mine) - ok,
        "ok_share": ok / len(mine),
        "cache_hits": len(mine) - len(sent),
        "tokens": {
            "input": _sum([r["input_tokens"] for r in mine]),
            "output": _sum([r["output_tokens"] for r in mine]),
            "cache_read": _sum([r["cache_read_input_tokens"] for r in mine]),
            "cache_creation": _sum([r["cache_creation_input_tokens"] for r in mine]),
        },
        "cost_usd": _sum([r["cost_usd"] for r in mine]),
        "ttft_s": timing("ttft_s"),
        "ttft_text_s": timing("ttft_text_s"),
        "e2e_s": timing("e2e_s"),
        "stream_output_tokens_per_s": timing("output_tokens_per_s"),
    }


def assert_variant(found: dict[str, Any], want: dict[str, Any]) -> None:
    for key in ("variant", "models", "rows", "ok", "error", "cache_hits", "tokens"):
        assert found[key] == want[key], key
    assert found["ok_share"] == pytest.approx(want["ok_share"])
    assert found["cost_usd"] == pytest.approx(want["cost_usd"])
    for key in ("ttft_s", "ttft_text_s", "e2e_s", "stream_output_tokens_per_s"):
        assert found[key]["count"] == want[key]["count"], key
        for p in ("p50", "p90", "p99"):
            assert found[key][p] == pytest.approx(want[key][p]), (key, p)


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "batchrun.cli", "report", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


# --- side by side -----------------------------------------------------------------------------


def test_json_compares_the_variants_with_numbers_from_the_rows(tmp_path: Path) -> None:
    """--json has one entry per variant, in the job's order, each equal to the same figures
    computed by hand from the literal rows; cache hits counted and left out of the timings."""
    rows = variant_rows()
    run_dir = write_folder(tmp_path / "run", rows)
    done = _cli(run_dir, "--json", "--no-html")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [v["variant"] for v in report["variants"]] == ["sonnet", "haiku"]
    for found in report["variants"]:
        assert_variant(found, expected(rows, found["variant"]))
    sonnet, haiku = report["variants"]
    assert sonnet["e2e_s"]["p99"] < 100  # the hits' 100 s are another run's
    assert haiku["ttft_text_s"]["p50"] is None  # no text timing recorded
    # the whole run: the same rule for its timings and a count of the hits
    sent = [r for r in rows if not r["cache_hit"] and r["e2e_s"] is not None]
    assert report["cache_hits"] == 2
    assert report["e2e_s"]["count"] == len(sent) == 8
    assert report["e2e_s"]["max"] == pytest.approx(max(r["e2e_s"] for r in sent))
    generated = sum(r["output_tokens"] for r in rows if r["output_tokens"] and not r["cache_hit"])
    assert report["output_tokens_per_s"] == pytest.approx(generated / report["duration_s"])
    slowest = report["completions"]["slowest"]
    assert [(r["variant"], r["id"]) for r in slowest[:2]] == [("sonnet", "r3"), ("sonnet", "r2")]


def test_the_terminal_shows_a_column_per_variant_and_names_the_variant_of_rows(
    tmp_path: Path,
) -> None:
    """A table of a column per variant within 100 characters, the hits in the rows line, and
    the variant beside the id of the completions shown."""
    run_dir = write_folder(tmp_path / "run", variant_rows())
    done = _cli(run_dir, "--no-html")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "rows      12: ok 10 · error 2 · 2 from the response cache" in text
    table = text[text.index("variants side by side") :].split("\n\n")[0].splitlines()
    assert all(len(line) <= 100 for line in table)
    assert table[1].split() == ["variant", "sonnet", "haiku"]
    assert table[2].split() == ["model", "claude-sonnet-5-5", "claude-haiku-5-5"]
    assert any(line.split() == ["ok", "%", "100.0", "66.7"] for line in table)
    assert any(line.split() == ["cache", "hits", "2", "0"] for line in table)
    assert any(line.split() == ["cost", "$1.00", "$0.0004"] for line in table)
    assert any(line.split() == ["e2e", "ms", "p50", "2,500.0", "650.0"] for line in table)
    # sonnet's text came after its first token; haiku recorded no text timing
    assert any(line.split() == ["ttft", "text", "ms", "p50", "300.0", "\u2013"] for line in table)
    assert "haiku · r4 #0 (overloaded_error): 'overloaded_error on row 4'" in text


def test_the_page_holds_the_comparison(tmp_path: Path) -> None:
    """report.html has the variants table and a variant column beside the rows' ids."""
    run_dir = write_folder(tmp_path / "run", variant_rows())
    done = _cli(run_dir)
    assert done.returncode == 0, done.stderr
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "Variants side by side" in page
    assert '<th class="n">sonnet</th><th class="n">haiku</th>' in page
    assert '<td>ok %</td><td class="n">100.0</td><td class="n">66.7</td>' in page
    assert "<th>variant</th><th>id</th>" in page
    assert "<td>haiku</td><td class='mono'>r4</td>" in page


@pytest.mark.parametrize("variant", ["none", "null"])
def test_a_folder_before_variants_reads_as_one_variant_named_default(
    tmp_path: Path, variant: str
) -> None:
    """Without the column, or with nulls in it, every row is variant default: no comparison
    anywhere, and the report as it was (rows named by id and sample only)."""
    rows = [{**r, "id": f"{r['variant']}-{r['id']}"} for r in variant_rows()]
    run_dir = write_folder(tmp_path / "run", rows, variant=variant)
    run = load_run(run_dir)
    assert run.variants == ["default"]
    assert run.results["variant"].to_list() == ["default"] * 12
    done = _cli(run_dir, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert "variants" not in report
    assert report == json.loads(json.dumps(summarize(run)))
    assert report["rows"] == 12
    assert report["cache_hits"] == 2
    text = _cli(run_dir, "--no-html").stdout
    assert "variants side by side" not in text
    assert "haiku-r4 #0 (overloaded_error)" in text
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert "Variants side by side" not in page
    assert "<th>variant</th>" not in page


# --- --by and two runs --------------------------------------------------------------------------


def test_by_breaks_each_value_down_per_variant(tmp_path: Path) -> None:
    """--by topic: per topic, and under it per variant, rows and latencies computed by hand."""
    rows = variant_rows()
    run_dir = write_folder(tmp_path / "run", rows)
    done = _cli(run_dir, "--by", "topic", "--json", "--no-html")
    assert done.returncode == 0, done.stderr
    groups = {g["value"]: g for g in json.loads(done.stdout)["by"]["groups"]}
    assert set(groups) == {"maths", "history"}
    for topic, group in groups.items():
        mine = [r for r in rows if TOPICS[r["id"]] == topic]
        assert group["rows"] == len(mine) == 6
        assert [v["variant"] for v in group["variants"]] == ["sonnet", "haiku"]
        for split in group["variants"]:
            theirs = [r for r in mine if r["variant"] == split["variant"]]
            sent = [r["e2e_s"] for r in theirs if not r["cache_hit"] and r["e2e_s"] is not None]
            assert split["rows"] == len(theirs)
            assert split["ok"] == sum(r["status"] == "ok" for r in theirs)
            assert split["e2e_s_p50"] == pytest.approx(_quantile(sent, 0.5))
            assert split["cost_usd"] == pytest.approx(_sum([r["cost_usd"] for r in theirs]))
    # history under sonnet is r3 (sent) and two cache hits: only r3 is timed
    sonnet = groups["history"]["variants"][0]
    assert sonnet["e2e_s_p90"] == pytest.approx(4.0)
    text = _cli(run_dir, "--by", "topic", "--no-html").stdout
    assert "\n  sonnet " in text
    assert "\n  haiku " in text


def test_two_variant_runs_compared_on_variant_id_and_sample(tmp_path: Path) -> None:
    """report A B matches rows by (variant, id, sample): the same id under two variants is two
    rows, and a change under one variant is that variant's."""
    rows = variant_rows()
    run_a = write_folder(tmp_path / "a" / "run", rows)
    changed = [
        {**r, "completion": "something else"} if (r["variant"], r["id"]) == ("haiku", "r1") else r
        for r in rows
        if (r["variant"], r["id"]) != ("sonnet", "r2")
    ]
    run_b = write_folder(tmp_path / "b" / "run", changed)
    comparison = compare_runs(load_run(run_a), load_run(run_b))
    c = comparison["completions"]
    assert c["key"] == ["variant", "id", "sample"]
    assert (c["compared"], c["changed"], c["only_in_a"], c["only_in_b"]) == (11, 1, 1, 0)
    assert [(r["variant"], r["id"], r["sample"]) for r in c["rows"]] == [("haiku", "r1", 0)]
    assert c["rows"][0]["a"]["completion"] == "haiku says 1"
    assert c["rows"][0]["b"]["completion"] == "something else"
    done = _cli(run_a, run_b)
    assert done.returncode == 0, done.stderr
    assert "1 of 11 (variant, id, sample) keys in both runs changed" in done.stdout
    assert "\n  haiku · r1 #0\n" in done.stdout
    page = (run_a / "compare.html").read_text(encoding="utf-8")
    assert "<td>haiku</td><td class='mono'>r1</td>" in page


# --- a simulated run ----------------------------------------------------------------------------


async def test_a_simulated_run_under_two_variants(
    write_job: JobWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real run folder, its rows copied under a second variant with another model: each
    variant's figures equal a polars group_by of the Parquet read back."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    run_dir = (await run_job(load_job(write_job(rows=6)), sleep=no_sleep)).run_dir
    results = pl.read_parquet(run_dir / "results.parquet")
    attempts = pl.read_parquet(run_dir / "attempts.parquet")
    other = results.with_columns(
        model=pl.lit("claude-haiku-5-5"),
        e2e_s=pl.col("e2e_s") * 2,
        ttft_s=pl.col("ttft_s") * 3,
        ttft_text_s=pl.col("ttft_text_s") * 3,
    )
    pl.concat(
        [results.with_columns(variant=pl.lit("a")), other.with_columns(variant=pl.lit("b"))]
    ).write_parquet(run_dir / "results.parquet")
    pl.concat([attempts.with_columns(variant=pl.lit(v)) for v in ("a", "b")]).write_parquet(
        run_dir / "attempts.parquet"
    )
    written = pl.read_parquet(run_dir / "results.parquet")
    by_hand = {
        row["variant"]: row
        for row in written.group_by("variant")
        .agg(
            rows=pl.len(),
            output=pl.col("output_tokens").sum(),
            ttft_p90=pl.col("ttft_s").quantile(0.9, "linear"),
            e2e_p50=pl.col("e2e_s").quantile(0.5, "linear"),
        )
        .iter_rows(named=True)
    }
    done = _cli(run_dir, "--json", "--no-html")
    assert done.returncode == 0, done.stderr
    variants = {v["variant"]: v for v in json.loads(done.stdout)["variants"]}
    assert list(variants) == ["a", "b"]  # run.json names no variants: by name
    assert variants["b"]["models"] == ["claude-haiku-5-5"]
    for name, row in by_hand.items():
        found = variants[name]
        assert (
            (found["rows"], found["tokens"]["output"])
            == (row["rows"], row["output"])
            == (
                6,
                results["output_tokens"].sum(),
            )
        )
        assert found["ttft_s"]["p90"] == pytest.approx(row["ttft_p90"])
        assert found["e2e_s"]["p50"] == pytest.approx(row["e2e_p50"])
    assert variants["b"]["e2e_s"]["p50"] == pytest.approx(2 * variants["a"]["e2e_s"]["p50"])
    # plain text answers: the first text is the first token, and the table says it once
    assert variants["a"]["ttft_text_s"] == variants["a"]["ttft_s"]
    text = _cli(run_dir, "--no-html").stdout
    assert "\nttft ms p50 " in text
    assert "ttft text" not in text


# --- two runs of variants compared ----------------------------------------------------------------


async def test_two_simulated_runs_of_variants_compared_per_variant(
    write_job: JobWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two real runs of a job of variants, B failing one input row and adding a variant: report
    A B compares each variant, its figures A and B equal to a polars group_by of each run's
    Parquet, its rows matched on (variant, id, sample); terminal, --json and the page agree."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    variants = [
        {"name": "sonnet"},
        {"name": "haiku", "request": {"model": "claude-haiku-4-5"}},
    ]
    path_a = write_job(rows=6, extra={"variants": variants, "output": {"dir": "out-a"}}, name="a")
    run_a = (await run_job(load_job(path_a), sleep=no_sleep)).run_dir
    fault = {"kind": "invalid_request", "match": "photosynthesis"}  # input row r1
    path_b = write_job(
        rows=6,
        extra={
            "variants": [*variants, {"name": "opus", "request": {"model": "claude-opus-4-5"}}],
            "output": {"dir": "out-b"},
            "sim": {"faults": [fault]},
        },
        name="b",
    )
    run_b = (await run_job(load_job(path_b), sleep=no_sleep)).run_dir

    def by_hand(run_dir: Path) -> dict[str, dict[str, Any]]:
        results = pl.read_parquet(run_dir / "results.parquet")
        sent = ~pl.col("cache_hit")
        table = results.group_by("variant").agg(
            rows=pl.len(),
            ok_share=(pl.col("status") == "ok").mean(),
            cost_usd=pl.col("cost_usd").sum(),
            e2e_p50=pl.col("e2e_s").filter(sent).quantile(0.5, "linear"),
            ttft_p90=pl.col("ttft_s").filter(sent).quantile(0.9, "linear"),
        )
        return {row["variant"]: row for row in table.iter_rows(named=True)}

    hand_a, hand_b = by_hand(run_a), by_hand(run_b)
    done = _cli(run_a, run_b, "--json", "--no-html")
    assert done.returncode == 0, done.stderr
    entries = json.loads(done.stdout)["variants"]
    assert [v["variant"] for v in entries] == ["sonnet", "haiku", "opus"]  # A's order, then B's
    for entry in entries:
        name = entry["variant"]
        metric = {m["metric"]: m for m in entry["metrics"]}
        for side, hand in (("a", hand_a), ("b", hand_b)):
            if name not in hand:
                assert entry[side] is None
                assert metric["rows"][side] is None
                continue
            want = hand[name]
            assert metric["rows"][side] == want["rows"] == 6
            assert metric["ok share"][side] == pytest.approx(want["ok_share"])
            assert metric["est. cost $"][side] == pytest.approx(want["cost_usd"])
            assert metric["e2e p50 s"][side] == pytest.approx(want["e2e_p50"])
            assert metric["ttft p90 s"][side] == pytest.approx(want["ttft_p90"])
    sonnet = {m["metric"]: m for m in entries[0]["metrics"]}
    assert (sonnet["ok"]["a"], sonnet["ok"]["b"], sonnet["ok"]["delta"]) == (6, 5, -1)
    assert sonnet["ok share"]["delta"] == pytest.approx(-1 / 6)
    matched = [e["completions"] for e in entries]
    assert [(m["compared"], m["only_in_a"], m["only_in_b"]) for m in matched] == [
        (6, 0, 0),
        (6, 0, 0),
        (0, 0, 6),
    ]
    assert matched[0]["changed"] >= 1  # r1 failed in B: no completion where A had one

    text = _cli(run_a, run_b).stdout
    assert "\nvariant sonnet: 6 (variant, id, sample) keys in both runs, " in text
    assert "\nvariant opus (not in A): 0 (variant, id, sample) keys in both runs" in text
    page = (run_a / "compare.html").read_text(encoding="utf-8")
    assert "<h2>Variants, B against A</h2>" in page
    assert "<h3>opus (not in A)</h3>" in page


def test_runs_of_one_variant_have_no_per_variant_comparison(tmp_path: Path) -> None:
    """Two folders written before variants: one variant, default, between them; nothing to
    compare per variant, and the key is left out."""
    rows = [r for r in variant_rows() if r["variant"] == "sonnet"]
    run_a = write_folder(tmp_path / "a" / "run", rows, variant="none")
    run_b = write_folder(tmp_path / "b" / "run", rows, variant="none")
    comparison = compare_runs(load_run(run_a), load_run(run_b))
    assert "variants" not in comparison
