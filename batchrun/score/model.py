"""The ``model`` scorer: render each row's judge prompt, have the judge answer, read the grade.

The sending (pool, budgets, spend cap, retries, resume, ``judgements.parquet``) is
:func:`batchrun.score.judge.run_judgements`'; this module only makes the prompts and reads the
replies (:func:`batchrun.score.grade.extract_grade`). A judge request that failed, or a reply
with no readable grade, gives a null score with ``error`` saying why.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import polars as pl

from batchrun.job.schema import Job
from batchrun.job.scorers import ModelScorer
from batchrun.score.grade import extract_grade
from batchrun.score.judge import run_judgements
from batchrun.score.kinds import OUTPUT, render

__all__ = ["judge_rows"]

KEY = ["variant", "id", "sample"]


def judge_prompts(scorer: ModelScorer, rows: pl.DataFrame) -> pl.DataFrame:
    """One prompt a row: variant, id, sample, prompt (the system template, when given, is
    put before the prompt: the judge's request has the job's system-less shape)."""
    prompt = render(scorer.prompt)
    if scorer.system is not None:
        prompt = pl.concat_str([render(scorer.system), pl.lit("\n\n"), prompt])
    return rows.select(*KEY, prompt.alias("prompt"))


async def judge_rows(
    job: Job,
    scorer: ModelScorer,
    rows: pl.DataFrame,
    run_dir: Path,
    transport: httpx.AsyncBaseTransport | None = None,
) -> pl.DataFrame:
    """The scores of ``rows`` by the judge, in the order of ``rows``."""
    if rows.is_empty():
        return pl.DataFrame(schema=OUTPUT)
    prompts = judge_prompts(scorer, rows)
    unrendered = prompts.filter(pl.col("prompt").is_null())
    replies = await run_judgements(
        job,
        scorer=scorer.name,
        request=job.request.derive(scorer.request_changes()),
        prompts=prompts.filter(pl.col("prompt").is_not_null()),
        run_dir=run_dir,
        transport=transport,
    )
    graded: list[tuple[float | None, str | None, str | None, str | None]] = []
    for status, completion, message in replies.select(
        "status", "completion", "error_message"
    ).iter_rows():
        if status != "ok" or completion is None:
            graded.append((None, None, completion, f"the judge's request failed: {message}"))
            continue
        grade = extract_grade(
            completion, scorer.grade_pattern, values=scorer.values, scale=scorer.range
        )
        graded.append((grade.score, grade.answer, completion, grade.error))
    scored = pl.concat(
        [
            replies.select(KEY).hstack(pl.DataFrame(graded, schema=OUTPUT, orient="row")),
            unrendered.select(KEY).with_columns(
                pl.lit(None, pl.Float64).alias("score"),
                pl.lit(None, pl.String).alias("answer"),
                pl.lit(None, pl.String).alias("explanation"),
                pl.lit("no prompt: a column the template uses is null in this row").alias("error"),
            ),
        ]
    )
    ordered = rows.select(KEY).join(scored, on=KEY, how="left", maintain_order="left")
    unanswered = pl.col("score").is_null() & pl.col("error").is_null()
    no_reply = "the judge gave no reply (stopped early?); batchrun score sends it again"
    return ordered.select(list(OUTPUT)).with_columns(
        pl.when(unanswered).then(pl.lit(no_reply)).otherwise(pl.col("error")).alias("error")
    )
