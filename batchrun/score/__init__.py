"""Scores: the job's ``scorers:`` applied to a run folder's results, into ``scores.parquet``.

``command.py`` sequences a scoring pass (which rows, which scorer, the atomic write);
``kinds.py`` holds the scorers that need no model, ``model.py`` and ``grade.py`` the judge's
prompts and grades (``judge.py`` sends them); ``stats.py`` the statistics the report shows.
"""

from batchrun.score.command import SCORES_SCHEMA, ScoreOutcome, read_scores, score_run

__all__ = ["SCORES_SCHEMA", "ScoreOutcome", "read_scores", "score_run"]
