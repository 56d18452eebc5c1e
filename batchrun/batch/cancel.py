"""``batchrun JOB --cancel``: cancel a run folder's open batches, whoever is running it.

When no process holds the folder, the cancel is a run of its own (``run_batch_job`` with
``cancel``): it cancels, waits for the batches to end and collects what they finished. When a
run holds the folder, that run is asked through the ``cancel-requested`` file (it stops sending,
cancels its batches, including those it has not confirmed yet, and collects), and the batches
known to be open are canceled from here at once. It must not write rows or the batch state.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import httpx
import structlog

from batchrun.batch.api import BatchesAPI
from batchrun.batch.run import run_batch_job
from batchrun.batch.state import load_state, request_cancel
from batchrun.call.endpoint import api_key, http_client
from batchrun.call.retry import Sleep
from batchrun.errors import EXIT_OK, AttemptError, JobError, RunLockedError
from batchrun.job.schema import Job
from batchrun.outcome import RunOutcome

__all__ = ["cancel_job"]

log = structlog.get_logger()


async def cancel_job(
    job: Job,
    *,
    limit: int | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    sleep: Sleep = asyncio.sleep,
) -> RunOutcome:
    """Cancel the open batches of ``job``'s run folder; see the module's docstring.

    Returns the cancel run's outcome, or (when another run holds the folder) an outcome with
    status ``cancel_requested`` and exit code 0.
    """
    if job.request.mode != "batch":
        raise JobError(
            f"{job.path}: --cancel applies to batch mode (request.mode: batch); this job "
            "streams its requests, and a stream run is stopped with Ctrl-C or SIGTERM"
        )
    try:
        return await run_batch_job(job, limit=limit, cancel=True, transport=transport, sleep=sleep)
    except RunLockedError:
        pass
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
    return RunOutcome(run_dir, "", {}, EXIT_OK, "cancel_requested", message)
