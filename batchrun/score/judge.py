"""The model judge's sending side (a placeholder: the judge's own module replaces this file)."""

from __future__ import annotations

from pathlib import Path

import httpx
import polars as pl

from batchrun.job.request import RequestConfig
from batchrun.job.schema import Job

__all__ = ["run_judgements"]


async def run_judgements(
    job: Job,
    *,
    scorer: str,
    request: RequestConfig,
    prompts: pl.DataFrame,
    run_dir: Path,
    transport: httpx.AsyncBaseTransport | None = None,
) -> pl.DataFrame:
    """Send each prompt to the judge; one row per prompt: variant, id, sample, status,
    completion, error_message."""
    raise NotImplementedError("the judge helper's module replaces this")
