"""A shard's share of the job: how many input rows and requests it owns, for its progress, its
``run.json`` and ``batchrun validate --shard K/N``. Reads the input once more, a batch at a time
(the hash costs about a microsecond a row); sends nothing, writes nothing.
"""

from __future__ import annotations

from dataclasses import replace

from batchrun.job.schema import Job
from batchrun.load.inputs import iter_batches
from batchrun.models import InputSummary

__all__ = ["shard_summary"]


def shard_summary(job: Job, whole: InputSummary, limit: int | None) -> InputSummary:
    """``whole`` (the input's summary, as ``check_input`` gives it) cut to ``job``'s shard: the
    rows with at least one request in it, and its requests. The whole job's summary as it is
    when ``job`` is not a shard."""
    if job.shard is None:
        return whole
    rows = requests = 0
    last = None
    for batch in iter_batches(job, limit=limit):
        requests += len(batch)
        for item in batch:  # a row's requests come together: count where the row changes
            if item.row != last:
                rows, last = rows + 1, item.row
    return replace(whole, rows=rows, requests=requests)
