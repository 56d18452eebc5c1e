"""``batchrun JOB --cancel`` while another process runs the folder: ask it to cancel.

When no process holds the folder, the cancel is a run of its own
(:func:`batchrun.run.cancel_job` runs the job with ``cancel``). When a run holds it, that run
is asked through the ``cancel-requested`` file (it stops sending, cancels its batches,
including those it has not confirmed yet, and collects), and the batches known to be open are
canceled from here at once.
It must not write rows or the batch state.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import structlog

from batchrun.batch.api import BatchesAPI
from batchrun.batch.state import load_state, request_cancel
from batchrun.call.endpoint import http_client
from batchrun.errors import EXIT_OK, AttemptError
from batchrun.job.schema import Job
from batchrun.models import RunOutcome, RunStatus
from batchrun.preflight import api_key

__all__ = ["ask_holder"]

log = structlog.get_logger()


async def ask_holder(job: Job, *, transport: httpx.AsyncBaseTransport | None = None) -> RunOutcome:
    """Ask the run holding ``job``'s folder to cancel, and cancel the batches known to be open
    from here at once; the outcome has status ``cancel_requested`` and exit code 0."""
    run_dir = job.run_dir(datetime.now(UTC)).resolve()
    await asyncio.to_thread(request_cancel, run_dir)
    state = await asyncio.to_thread(load_state, run_dir)
    open_ids = [r.id for r in state.records if r.status == "open" and r.id is not None]
    canceled = 0
    base_url = str(job.endpoint.base_url)
    if open_ids and base_url != "sim":  # an in-process simulator belongs to the running process
        async with http_client(job, base_url, api_key(job), transport) as client:
            api = BatchesAPI(client, job.request.api_spec)
            for batch_id in open_ids:
                try:
                    await api.cancel(batch_id)
                except AttemptError as exc:  # the running process cancels it in any case
                    log.warning("batchrun.batch.cancel_failed", batch_id=batch_id, error=str(exc))
                else:
                    canceled += 1
                    log.info("batchrun.batch.cancel_sent", batch_id=batch_id)
    message = (
        f"cancel requested: {canceled} of {len(open_ids)} open batch(es) of {run_dir} canceled "
        "from here; the run holding the folder cancels the rest, stops sending and collects "
        "what they finished"
    )
    return RunOutcome(run_dir, "", {}, EXIT_OK, RunStatus.CANCEL_REQUESTED, message)
