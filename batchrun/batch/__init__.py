"""Batch mode: the same job through the Message Batches API, into the same results.parquet.

::

    entries.py    request items → batch entries (custom ids, wire forms) and groups within limits
    state.py      the run folder's batch/ files: state.json, requests and index per batch
    api.py        the Message Batches endpoints over httpx; errors classified as in stream mode
    reconcile.py  after a crash: is an unconfirmed batch on the API? (never send twice)
    rows.py       one result (succeeded, errored, canceled, expired) → result and attempt rows
    collect.py    a whole batch's results → rows in checkpoint parts
    session.py    submit, poll with backoff, collect, retry errored requests in follow-ups
    driver.py     BatchMode: batch mode's part of the one run lifecycle (batchrun.run)
    cancel.py     --cancel while another process holds the folder: ask it to cancel

It must not stream: per-request timing is stream mode's, and batch rows leave it null.
"""

from batchrun.batch.driver import BatchMode
from batchrun.batch.entries import BatchLimits

__all__ = ["BatchLimits", "BatchMode"]
