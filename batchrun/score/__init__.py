"""Scoring: what a run's completions are worth, by the job's scorers."""
