"""Settling an intent: did the batch we were about to create (or were creating) come to exist?

An ``intent`` record whose create call never answered (a crash, a timeout, a 5xx) may or may
not be a batch on the API, which takes no idempotency key. So before its requests are sent again
the workspace's batch list is read back to shortly before the intent was written: every batch
this folder does not know, with as many requests as the intent, is a *candidate*. A candidate is
recognised once it has ended, by the first custom id of its results: custom ids are salted per
run folder, so only this folder's batches carry them. A match is adopted; a stranger is dropped;
with no candidate left the batch never came to exist and the intent is sent again. Candidates
still running are waited for, never guessed at: sending twice costs money, waiting only time.
It must not write rows or send batches.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import structlog

from batchrun.batch.api import BatchesAPI, parse_time
from batchrun.batch.state import BatchRecord, BatchState, iter_entries
from batchrun.errors import PermanentError

__all__ = ["SETTLE_S", "Verdict", "reconcile", "update_record"]

log = structlog.get_logger()

Verdict = Literal["adopted", "absent", "waiting"]
SETTLE_S = 2.0  # a create request cut off by a crash has had this long to land
_SKEW = timedelta(minutes=10)  # our clock against the API's


def update_record(record: BatchRecord, batch: dict[str, Any]) -> None:
    """Copy what the API says of a batch into its record."""
    record.processing_status = _str(batch.get("processing_status"))
    counts = batch.get("request_counts")
    if isinstance(counts, dict):
        record.request_counts = {k: v for k, v in counts.items() if isinstance(v, int)}
    record.created_at = _str(batch.get("created_at")) or record.created_at
    record.ended_at = _str(batch.get("ended_at"))


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _total(batch: dict[str, Any]) -> int:
    counts = batch.get("request_counts")
    if not isinstance(counts, dict):
        return -1
    return sum(v for v in counts.values() if isinstance(v, int))


async def reconcile(
    api: BatchesAPI,
    state: BatchState,
    record: BatchRecord,
    run_dir: Path,
    *,
    now: datetime,
    save: Callable[[], None],
) -> Verdict:
    """Advance ``record`` (an intent that may have been sent) by one step; ``save`` persists
    ``state`` after each change. ``now`` is the wall clock (UTC)."""
    last_sent = parse_time(record.sent_at) or parse_time(record.intent_at)
    if last_sent is not None and now < last_sent + timedelta(seconds=SETTLE_S):
        return "waiting"
    if not record.listed:
        since = (parse_time(record.intent_at) or now) - _SKEW
        known = state.known_ids()
        listing = await api.list_since(since)
        record.candidates = [
            b["id"]
            for b in listing
            if isinstance(b.get("id"), str) and b["id"] not in known and _total(b) == record.count
        ]
        record.listed = True
        save()
        log.info(
            "batchrun.batch.reconciling",
            seq=record.seq,
            candidates=len(record.candidates),
            listed=len(listing),
        )
    ours: set[str] | None = None
    for candidate in list(record.candidates):
        if candidate in state.known_ids():
            record.candidates.remove(candidate)
            save()
            continue
        try:
            batch = await api.retrieve(candidate)
            if batch.get("processing_status") != "ended":
                continue
            first = await _first_custom_id(api, batch)
        except PermanentError:  # gone (deleted) or unreadable: it cannot be ours to adopt
            first, batch = None, {}
        if ours is None:
            ours = await asyncio.to_thread(
                lambda: {e.custom_id for e in iter_entries(run_dir, record)}
            )
        if first is not None and first in ours:
            record.id, record.status = candidate, "open"
            record.listed, record.candidates = False, []
            update_record(record, batch)
            save()
            log.info("batchrun.batch.adopted", seq=record.seq, batch_id=candidate)
            return "adopted"
        record.candidates.remove(candidate)
        save()
    if record.candidates:
        return "waiting"
    record.listed = False
    save()
    return "absent"


async def _first_custom_id(api: BatchesAPI, batch: dict[str, Any]) -> str | None:
    async with contextlib.aclosing(api.results(batch)) as lines:
        async for line in lines:
            custom_id = line.get("custom_id")
            return custom_id if isinstance(custom_id, str) else None
    return None
