"""Batch mode: the same job through the Message Batches API, into the same results.parquet.

::

    entries.py    request items → batch entries (custom ids, wire forms) and groups within limits
    state.py      the run folder's batch/ files: state.json, requests and index per batch
    api.py        the Message Batches endpoints over httpx; errors classified as in stream mode
    reconcile.py  after a crash: is an unconfirmed batch on the API? (never send twice)
    rows.py       one result (succeeded, errored, canceled, expired) → result and attempt rows
    collect.py    a whole batch's results → rows in checkpoint parts
    session.py    submit, poll with backoff, collect, retry errored requests in follow-ups
    run.py        run_batch_job, wired with the run folder, endpoint and outcome of stream mode
    cancel.py     cancel_job: --cancel, whether or not a run holds the folder

It must not stream: per-request timing is stream mode's, and batch rows leave it null.
"""

from batchrun.batch.cancel import cancel_job
from batchrun.batch.entries import BatchLimits
from batchrun.batch.run import run_batch_job

__all__ = [
    "BatchLimits",
    "cancel_job",
    "run_batch_job",
]
