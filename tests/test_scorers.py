"""Scorers (batchrun.job.scorers, batchrun.score): each kind on literal rows with known answers,
the judge's grades, and scoring a simulated run folder: at the end of a run, with
``batchrun score``, a scorer added later, ``--rescore`` and rows that ended in error."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml

import batchrun.score.model as judge_model
from batchrun.cli import main
from batchrun.errors import JobError
from batchrun.job.schema import load_job
from batchrun.job.scorers import (
    ChoiceScorer,
    ExactScorer,
    IncludesScorer,
    JsonScorer,
    ModelScorer,
    PythonScorer,
    RegexScorer,
    SqlScorer,
)
from batchrun.report import report_command
from batchrun.run import run_job
from batchrun.score import read_scores, score_run
from batchrun.score.grade import extract_grade
from batchrun.score.kinds import score_rows
from tests.conftest import JobWriter, no_sleep

JUDGE = {
    "name": "judge",
    "kind": "model",
    "model": "claude-haiku-4-5",
    "prompt": "Q: {question}\nA: {completion}\nGold: {gold}\nReply GRADE: C or GRADE: I.",
    "grade_pattern": "GRADE: ([CI])",
    "values": {"C": 1, "I": 0},
}


def _score(scorer: Any, rows: dict[str, list[Any]], base_dir: Path = Path()) -> list[Any]:
    frame = score_rows(scorer, pl.DataFrame(rows), base_dir)
    return frame["score"].to_list()


def test_exact_30_rows_18_correct() -> None:
    """30 rows of which 18 equal their gold (after strip and lower): 18 ones, mean 0.6."""
    gold = [f"city {i}" for i in range(30)]
    completion = [f"  City {i}\n" if i < 18 else f"town {i}" for i in range(30)]
    scorer = ExactScorer(name="e", kind="exact", target="{gold}", normalize=("strip", "lower"))
    scores = _score(scorer, {"completion": completion, "gold": gold})
    assert scores == [1.0] * 18 + [0.0] * 12
    assert sum(scores) / len(scores) == 0.6


def test_exact_and_includes_normalize() -> None:
    """Normalisation applies to both sides; includes looks for the target inside."""
    rows = {
        "completion": ["Paris.", "It is  PARIS, France", "Lyon", None],
        "gold": ["paris", "paris", "paris", "paris"],
    }
    exact = ExactScorer(
        name="e", kind="exact", target="{gold}", normalize=("strip", "lower", "strip_punctuation")
    )
    assert _score(exact, rows) == [1.0, 0.0, 0.0, 0.0]
    includes = IncludesScorer(
        name="i", kind="includes", target="{gold}", normalize=("lower", "collapse_whitespace")
    )
    assert _score(includes, rows) == [1.0, 1.0, 0.0, 0.0]


def test_a_null_target_is_not_scored() -> None:
    """A row whose gold is null gets a null score with the reason, not a 0."""
    frame = score_rows(
        ExactScorer(name="e", kind="exact", target="{gold}"),
        pl.DataFrame({"completion": ["a", "b"], "gold": ["a", None]}),
        Path(),
    )
    assert frame["score"].to_list() == [1.0, None]
    assert frame["error"].to_list()[1].startswith("no target")


def test_regex_match_group_and_literal_columns() -> None:
    """A pattern scores 1 on a match; with target, its group is compared; column values in the
    pattern match literally (a '.' in the gold is no wildcard)."""
    rows = {"completion": ["The answer is 4.5", "answer is 4x5", "no number"], "gold": ["4.5"] * 3}
    assert _score(RegexScorer(name="r", kind="regex", pattern=r"\b{gold}\b"), rows) == [
        1.0,
        0.0,
        0.0,
    ]
    scorer = RegexScorer(
        name="r", kind="regex", pattern=r"answer is (\S+)", group=1, target="{gold}"
    )
    frame = score_rows(scorer, pl.DataFrame(rows), Path())
    assert frame["score"].to_list() == [1.0, 0.0, 0.0]
    assert frame["answer"].to_list() == ["4.5", "4x5", None]


def test_json_parses_and_validates(tmp_path: Path) -> None:
    """JSON scores 1 when it parses; with a schema (inline or a file), only when it validates."""
    rows = {"completion": ['{"a": 1}', '{"a": "x"}', "not json", "[1]"]}
    assert _score(JsonScorer(name="j", kind="json"), rows) == [1.0, 1.0, 0.0, 1.0]
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    inline = JsonScorer.model_validate({"name": "j", "kind": "json", "schema": schema})
    frame = score_rows(inline, pl.DataFrame(rows), tmp_path)
    assert frame["score"].to_list() == [1.0, 0.0, 0.0, 0.0]
    assert "a: 'x' is not of type 'integer'" in frame["explanation"][1]
    (tmp_path / "s.json").write_text(json.dumps(schema), encoding="utf-8")
    from_file = JsonScorer.model_validate({"name": "j", "kind": "json", "schema": "s.json"})
    assert _score(from_file, rows, tmp_path) == [1.0, 0.0, 0.0, 0.0]


def test_choice_finds_the_letter() -> None:
    """The letter at the start or after 'answer' is the choice; none found scores 0."""
    rows = {
        "completion": ["B", "(C) Paris", "The answer is D.", "Answer: a", "I think so", "B. Rome"],
        "gold": ["B", "C", "d", "A", "A", "C"],
    }
    frame = score_rows(
        ChoiceScorer(name="c", kind="choice", target="{gold}"), pl.DataFrame(rows), Path()
    )
    assert frame["score"].to_list() == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert frame["answer"].to_list() == ["B", "C", "D", None, None, "B"]


def test_sql_is_vectorised_polars_sql() -> None:
    """A polars SQL expression over result and input columns; true/false are 1/0."""
    rows = {"completion": ["short", "x" * 300], "output_tokens": [3, 90]}
    scorer = SqlScorer(
        name="s", kind="sql", expression="length(completion) < 200 AND output_tokens < 50"
    )
    assert _score(scorer, rows) == [1.0, 0.0]
    with pytest.raises(JobError, match="no_such_column"):
        _score(SqlScorer(name="s", kind="sql", expression="no_such_column > 1"), rows)


def test_python_runs_the_users_function(tmp_path: Path) -> None:
    """module:function beside the job file gets the rows as a DataFrame; a list, a Series or a
    DataFrame with score (and answer) comes back."""
    (tmp_path / "my_scores.py").write_text(
        "import polars as pl\n"
        "def lengths(df):\n"
        "    return [float(len(c)) for c in df['completion']]\n"
        "def framed(df):\n"
        "    return pl.DataFrame({'score': [1.0] * df.height, 'answer': df['completion']})\n"
        "def short(df):\n"
        "    return [1.0]\n",
        encoding="utf-8",
    )
    rows = {"completion": ["ab", "abcd"]}
    assert _score(
        PythonScorer(name="p", kind="python", function="my_scores:lengths"), rows, tmp_path
    ) == [2.0, 4.0]
    frame = score_rows(
        PythonScorer(name="p", kind="python", function="my_scores:framed"),
        pl.DataFrame(rows),
        tmp_path,
    )
    assert frame["answer"].to_list() == ["ab", "abcd"]
    with pytest.raises(JobError, match="returned 1 scores for 2 rows"):
        _score(PythonScorer(name="p", kind="python", function="my_scores:short"), rows, tmp_path)
    with pytest.raises(JobError, match="cannot import"):
        _score(PythonScorer(name="p", kind="python", function="nowhere:f"), rows, tmp_path)


@pytest.mark.parametrize(
    ("reply", "score", "answer"),
    [
        ("Looks right. GRADE: C", 1.0, "C"),
        ("Reply GRADE: C or GRADE: I ... my verdict: GRADE: I", 0.0, "I"),
        ("grade: c", None, None),
        ("GRADE: X", None, "X"),
    ],
)
def test_grade_by_letter(reply: str, score: float | None, answer: str | None) -> None:
    """The last match of grade_pattern, through values; no match or an unknown grade: null."""
    grade = extract_grade(reply, "GRADE: ([A-Z])", values={"C": 1, "I": 0})
    assert (grade.score, grade.answer) == (score, answer)
    assert (grade.error is None) == (score is not None)


def test_grade_as_a_number() -> None:
    """A numeric grade is the score, or scaled to 0..1 by range; outside the range: null."""
    assert extract_grade("SCORE: 7.5", r"SCORE: ([\d.]+)").score == 7.5
    assert extract_grade("SCORE: 4", r"SCORE: (\d+)", scale=(1, 5)).score == 0.75
    assert extract_grade("SCORE: 9", r"SCORE: (\d+)", scale=(1, 5)).score is None
    assert extract_grade("SCORE: many", r"SCORE: (\w+)").error == "grade 'many' is not a number"


async def test_judge_rows_grades_replies_in_row_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prompts are rendered over input and result columns; replies are graded and put back in
    the rows' order; a failed judge request and a missing reply give null scores with why."""
    sent: list[pl.DataFrame] = []

    async def judge(
        job: Any, *, scorer: str, request: Any, prompts: pl.DataFrame, **_: Any
    ) -> pl.DataFrame:
        sent.append(prompts)
        assert request.model == "claude-haiku-4-5"
        assert request.samples == 1
        replies = {"r0": ("ok", "GRADE: C", None), "r1": ("error", None, "overloaded")}
        rows = [
            (v, i, s, *replies[i])
            for v, i, s in prompts.select("variant", "id", "sample").iter_rows()
            if i in replies
        ]
        return pl.DataFrame(
            rows,
            schema=["variant", "id", "sample", "status", "completion", "error_message"],
            orient="row",
        ).reverse()

    monkeypatch.setattr(judge_model, "run_judgements", judge)
    job = _job_with({"scorers": [JUDGE]})
    rows = pl.DataFrame(
        {
            "variant": ["default"] * 3,
            "id": ["r0", "r1", "r2"],
            "sample": [0, 0, 0],
            "question": ["q0", "q1", "q2"],
            "completion": ["a0", "a1", "a2"],
            "gold": ["g0", "g1", "g2"],
        }
    )
    scorer = job.scorers[0]
    assert isinstance(scorer, ModelScorer)
    frame = await judge_model.judge_rows(job, scorer, rows, Path())
    assert sent[0]["prompt"][0] == "Q: q0\nA: a0\nGold: g0\nReply GRADE: C or GRADE: I."
    assert frame["score"].to_list() == [1.0, None, None]
    assert frame["explanation"][0] == "GRADE: C"
    assert "overloaded" in frame["error"][1]
    assert "no reply" in frame["error"][2]


def _job_with(extra: dict[str, Any], tmp: Path | None = None) -> Any:
    base = {
        "name": "s",
        "input": {"path": "data.csv", "id_column": "id", "prompt": "{question}"},
        "request": {"model": "claude-sonnet-5-5"},
        **extra,
    }
    folder = tmp or Path.cwd()
    path = folder / "scorer-job.yaml"
    if tmp is None:
        from batchrun.job.schema import Job

        return Job.model_validate(base)
    path.write_text(yaml.safe_dump(base), encoding="utf-8")
    return load_job(path)


@pytest.mark.parametrize(
    ("scorers", "message"),
    [
        (
            [{"name": "a", "kind": "exact", "target": "{gold}"}, {"name": "a", "kind": "json"}],
            "scorers[1] and scorers[0] are both named 'a'",
        ),
        ([{"name": "a b", "kind": "json"}], "scorers[0].name: must be letters"),
        ([{"name": "a", "kind": "nope"}], "scorers[0]: Input tag 'nope'"),
        (
            [{"name": "a", "kind": "regex", "pattern": "(x"}],
            "scorers[0].pattern: not a regular expression",
        ),
        (
            [{"name": "a", "kind": "sql", "expression": "length("}],
            "scorers[0].expression: not a polars SQL",
        ),
        ([{**JUDGE, "max_tokns": 5}], "scorers[0]: max_tokns: not a key of a model scorer"),
        (
            [{**JUDGE, "grade_pattern": "GRADE: [CI]"}],
            "scorers[0].grade_pattern: needs exactly one group",
        ),
        (
            [{"name": "p", "kind": "python", "function": "no-colon"}],
            "scorers[0].function: must be module:function",
        ),
    ],
)
def test_bad_scorers_are_named(tmp_path: Path, scorers: list[dict[str, Any]], message: str) -> None:
    """A bad scorer is an exit-2 JobError naming scorers[i] and the key."""
    (tmp_path / "data.csv").write_text("id,question,gold\nr0,q,g\n", encoding="utf-8")
    with pytest.raises(JobError) as caught:
        _job_with({"scorers": scorers}, tmp_path)
    assert message in str(caught.value)


# A run on the simulator: 30 questions, gold 'yes' for the first 18 (the python scorer below
# says 1 exactly there), one question the simulator refuses with a 400.
FAIL = "please fail this one"


def _folder_job(write_job: JobWriter, scorers: list[dict[str, Any]], samples: int = 1) -> Path:
    faults = [{"kind": "invalid_request", "match": FAIL}]
    path = write_job(
        rows=1,
        extra={"sim": {"faults": faults}, "request": {"samples": samples}, "scorers": scorers},
    )
    lines = ["id,question,gold"] + [
        f"r{i:02d},question {i},{'yes' if i < 18 else 'no'}" for i in range(30)
    ]
    lines.append(f"bad,{FAIL},yes")
    (path.parent / "data.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (path.parent / "gold_scores.py").write_text(
        "def gold(df):\n    return [1.0 if g == 'yes' else 0.0 for g in df['gold']]\n",
        encoding="utf-8",
    )
    return path


GOLD = {"name": "gold", "kind": "python", "function": "gold_scores:gold"}
LENGTH = {"name": "length", "kind": "sql", "expression": "length(completion) > 0"}


async def test_a_run_scores_at_its_end_and_the_report_has_the_statistics(
    write_job: JobWriter,
) -> None:
    """A run with scorers ends with scores.parquet: one row per result row and scorer; the row
    that ended in error has a null score, counted apart; the report's mean is 18/30 exactly
    with the Wilson interval."""
    job = load_job(_folder_job(write_job, [GOLD, LENGTH]))
    outcome = await run_job(job, sleep=no_sleep)
    assert outcome.exit_code == 1
    scores = read_scores(outcome.run_dir)
    assert scores.height == 31 * 2
    assert set(scores.columns) == {
        "run_id",
        "variant",
        "id",
        "sample",
        "scorer",
        "score",
        "answer",
        "explanation",
        "error",
    }
    failed = scores.filter(pl.col("id") == "bad")
    assert failed["score"].to_list() == [None, None]
    assert failed["error"][0] == "the row ended in error (invalid_request_error)"
    results = pl.read_parquet(outcome.run_dir / "results.parquet")
    assert (
        scores.filter(pl.col("scorer") == "gold").sort("id")["run_id"].to_list()
        == results.sort("id")["run_id"].to_list()
    )

    from io import StringIO

    out = StringIO()
    report_command([outcome.run_dir], as_json=True, html=False, out=out)
    gold = json.loads(out.getvalue())["scores"]["scorers"][0]
    (stats,) = gold["variants"]
    assert (gold["scorer"], stats["rows"], stats["scored"], stats["row_errors"]) == (
        "gold",
        31,
        30,
        1,
    )
    assert stats["mean"] == 0.6
    assert (round(stats["low"], 3), round(stats["high"], 3), stats["method"]) == (
        0.423,
        0.754,
        "wilson",
    )
    assert stats["error_share"] == pytest.approx(1 / 31)
    text = StringIO()
    report_command([outcome.run_dir], html=True, out=text, err=StringIO())
    assert "0.600 [0.423, 0.754]" in text.getvalue()
    assert "0.600" in (outcome.run_dir / "report.html").read_text(encoding="utf-8")
    by = StringIO()
    report_command([outcome.run_dir], as_json=True, html=False, by="gold", out=by)
    groups = json.loads(by.getvalue())["scores"]["by"]["groups"]
    means = {(g["scorer"], g["value"]): (g["mean"], g["scored"]) for g in groups}
    assert means[("gold", "yes")] == (1.0, 18)
    assert means[("gold", "no")] == (0.0, 12)


def test_score_command_adds_a_scorer_and_rescores(
    write_job: JobWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    """`batchrun score` on a finished run: nothing to do; with a scorer added it scores only
    with that one; --rescore NAME scores every row again with NAME; no generation request is
    sent (results.parquet is untouched)."""
    path = _folder_job(write_job, [LENGTH])
    outcome = asyncio.run(run_job(load_job(path), sleep=no_sleep))
    results = outcome.run_dir / "results.parquet"
    before = results.stat().st_mtime_ns
    assert asyncio.run(score_run(load_job(path))).scored == {}

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["scorers"].append(GOLD)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    length_rows = read_scores(outcome.run_dir).filter(pl.col("scorer") == "length")
    assert main(["-q", "score", str(path)]) == 0
    assert "scored 31 rows with gold" in capsys.readouterr().err
    scores = read_scores(outcome.run_dir)
    assert scores.filter(pl.col("scorer") == "length").equals(length_rows)
    assert scores.filter(pl.col("scorer") == "gold").height == 31

    again = asyncio.run(score_run(load_job(path), rescore="gold"))
    assert again.scored == {"gold": 31}
    assert read_scores(outcome.run_dir).height == 62
    assert results.stat().st_mtime_ns == before
    with pytest.raises(JobError, match="--rescore nope: the job has no scorer of that name"):
        asyncio.run(score_run(load_job(path), rescore="nope"))
    data["scorers"].append({"name": "typo", "kind": "exact", "target": "{gould}"})
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(JobError, match=r"scorers\[2\] \(typo\) uses column 'gould'"):
        asyncio.run(score_run(load_job(path)))
    assert main(["-q", "validate", str(path)]) == 2  # and a run refuses it before sending
    assert "uses column 'gould'" in capsys.readouterr().err


async def test_samples_give_pass_at_k_and_a_clustered_interval(write_job: JobWriter) -> None:
    """With 3 samples an id, pass@1 and pass@3 are reported and the interval is a bootstrap
    over ids."""
    path = _folder_job(write_job, [GOLD], samples=3)
    outcome = await run_job(load_job(path), sleep=no_sleep)
    from io import StringIO

    out = StringIO()
    report_command([outcome.run_dir], as_json=True, html=False, out=out)
    (stats,) = json.loads(out.getvalue())["scores"]["scorers"][0]["variants"]
    assert stats["method"] == "bootstrap"
    assert stats["pass_at_k"] == {"1": 0.6, "3": 0.6}


def test_pairs_of_variants_are_compared(tmp_path: Path) -> None:
    """Two variants on the same ids: the paired difference, McNemar's test and a plain verdict."""
    from batchrun.report.load import RunData
    from batchrun.report.scores import score_section

    a = [1] * 20 + [0] * 20
    b = [1] * 20 + [1] * 15 + [0] * 5
    rows = [("r", "a", f"i{i}", 0, "s", float(x), None, None, None) for i, x in enumerate(a)]
    rows += [("r", "b", f"i{i}", 0, "s", float(x), None, None, None) for i, x in enumerate(b)]
    from batchrun.score import SCORES_SCHEMA

    pl.DataFrame(rows, schema=SCORES_SCHEMA, orient="row").write_parquet(
        tmp_path / "scores.parquet"
    )
    run = RunData(tmp_path, pl.DataFrame(), pl.DataFrame(), {}, "complete")
    section = score_section(run)
    assert section is not None
    (pair,) = section["scorers"][0]["pairs"]
    assert (pair["a"], pair["b"], pair["rows"], pair["test"]) == ("a", "b", 40, "mcnemar exact")
    assert pair["difference"] == pytest.approx(15 / 40)
    assert pair["p_value"] == pytest.approx(2 / 2**15)
    assert pair["distinguishable"]
    assert pair["verdict"].startswith("b scores higher than a")


def test_a_failing_scorer_keeps_the_scores_made_before_it(write_job: JobWriter) -> None:
    """A user function that raises stops scoring with a JobError naming it; scores.parquet
    keeps the earlier scorer's rows, whole, and no temporary file is left."""
    path = _folder_job(
        write_job, [LENGTH, {"name": "boom", "kind": "python", "function": "boom:f"}]
    )
    (path.parent / "boom.py").write_text(
        "def f(df):\n    raise KeyError('nope')\n", encoding="utf-8"
    )
    with pytest.raises(JobError, match="scorers boom: function boom:f raised KeyError"):
        asyncio.run(run_job(load_job(path), sleep=no_sleep))
    run_dir = path.parent / "out"
    assert read_scores(run_dir)["scorer"].unique().to_list() == ["length"]
    assert sorted(p.name for p in run_dir.iterdir() if "scores" in p.name) == ["scores.parquet"]
