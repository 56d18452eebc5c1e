"""Variants, scorers, the spend cap and shards used together: what each piece's own tests do not
meet, found running them as one job (two variants, an ``includes`` scorer and a model judge) on
the simulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import yaml

from tests.conftest import JobWriter
from tests.test_shards import UNIQUE, batchrun

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
