"""Batch mode's driver: sends batches, follows them to their end, collects their results.

Crash safety rests on the order of writes. Before a batch is created its requests, its index
and an ``intent`` record are on disk, and the record is stamped before every create call; once
the API answers, the record holds the batch id. An ended batch's rows reach checkpoint parts
before its record says ``collected``, in the same state write that adds the records of its
retries. So a run killed at any point resumes without sending anything twice: ``open`` records
are polled again; ``collected`` ones are never fetched again (fetching an ``open`` one whose rows
were written already writes the same rows); an ``intent`` is reconciled against the API's batch
list (``reconcile``) before it is sent again. It must not read the input, choose the exit code
or write run.json (``run`` does).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from batchrun.batch.api import BatchesAPI, refused
from batchrun.batch.collect import FLUSH_ROWS, Recorder, times_of
from batchrun.batch.entries import BatchLimits, Entry, Splitter, body, make_entry, wire_custom_id
from batchrun.batch.reconcile import reconcile, update_record
from batchrun.batch.rows import BatchTimes
from batchrun.batch.state import (
    BatchRecord,
    BatchState,
    cancel_requested,
    iter_entries,
    iter_wires,
    save_state,
    write_batch_files,
)
from batchrun.call.retry import Backoff
from batchrun.clock import Clock, Sleep
from batchrun.errors import AttemptError, FatalAPIError, PermanentError, RetryableError
from batchrun.job.schema import Job
from batchrun.models import RequestItem, Stop
from batchrun.record.cost import rates_for
from batchrun.record.parquet import ResultsWriter
from batchrun.record.response_cache import ResponseCache, cache_key, hit_row
from batchrun.schedule.spend import SpendLedger

__all__ = ["Session"]

log = structlog.get_logger()


@dataclass
class Session:
    """One process's work on a run folder's batches."""

    job: Job
    run_dir: Path
    run_id: str
    api: BatchesAPI
    writer: ResultsWriter
    state: BatchState
    clock: Clock
    sleep: Sleep
    limits: BatchLimits
    stop: Stop
    canceling: bool = False
    spend: SpendLedger = field(default_factory=SpendLedger)  # the cap, at batch prices
    cache: ResponseCache | None = None  # the response cache (job's cache.mode), or None
    created: int = 0  # batches this session created
    sent: int = 0  # requests in them
    _unsent: set[int] = field(default_factory=set)  # intents known not to be batches
    _not_before: dict[int, float] = field(default_factory=dict)  # refused: retry after this
    _refusals: dict[int, int] = field(default_factory=dict)
    _cancel_sent: set[str] = field(default_factory=set)
    recorder: Recorder = field(init=False)
    backoff: Backoff = field(init=False)  # between polls and after a refused create

    def __post_init__(self) -> None:
        self.backoff = Backoff(self.job.retry.initial_backoff_s, self.job.retry.max_backoff_s)
        prices = self.job.prices
        self.recorder = Recorder(
            self.writer,
            self.run_id,
            self.job.request.api_spec,
            self.job.retry.max_attempts,
            self.clock,
            {
                v.name: (v.request.model, rates_for(v.request.model, prices, "batch"))
                for v in self.job.effective_variants
            },
            cache=self.cache,
            cache_key=self._cache_key,
        )

    def save(self) -> None:
        save_state(self.run_dir, self.state)

    def _wall(self) -> datetime:
        return self.clock.wall(self.clock.now())

    def _halted(self) -> bool:
        return self.stop.event.is_set() or self.canceling

    # --- sending ---------------------------------------------------------------------------

    async def submit(self, items: AsyncIterator[RequestItem]) -> None:
        """Send ``items`` in batches within the limits; one too large for any batch is an error
        row. Stops early on a signal or a cancel."""
        splitter = Splitter(self.limits)
        async for item in items:
            if self._halted():
                return
            entry, wire = make_entry(self.job, item, self.state.salt)
            if await self._cached(item, entry):
                continue  # answered from the response cache: never submitted
            if not self._affords(entry, wire):
                break  # past the spend cap: this request and the rest wait for a later run
            if not splitter.fits(wire):
                too_large = PermanentError(
                    "request_too_large",
                    f"the request alone exceeds the batch size limit ({self.limits.max_bytes:,} "
                    "bytes)",
                )
                now = self._wall()
                await self.recorder.errors([entry], too_large, BatchTimes(None, now, now))
                continue
            full = splitter.add(entry, wire)
            if full:
                await self._send_new(full)
        rest = splitter.rest()
        if rest and not self._halted():
            await self._send_new(rest)

    def _affords(self, entry: Entry, wire: bytes) -> bool:
        """Whether the spend cap holds the worst case of ``wire``'s request (then it is held
        for the rest of the session: batches report their cost only when collected)."""
        if self.spend.cap_usd is None:
            return True
        params = json.loads(wire)["params"]
        usd = self.spend.worst_case(self.job.request.api_spec, params, entry.variant)
        if self.spend.take(usd):
            return True
        log.warning(
            "batchrun.batch.capped",
            cap_usd=self.spend.cap_usd,
            spent_usd=round(self.spend.spent_usd, 6),
            held_usd=round(self.spend.held_usd, 6),
            note="requests that do not fit the cap are left for a later run",
        )
        return False

    def _cache_key(self, entry: Entry) -> str:
        endpoint = self.job.endpoint
        return cache_key(
            entry.request_hash, entry.sample, endpoint.anthropic_version, endpoint.base_url
        )

    async def _cached(self, item: RequestItem, entry: Entry) -> bool:
        """Record ``item`` from the response cache if it is there; whether it was."""
        if self.cache is None:
            return False
        cached = await asyncio.to_thread(self.cache.get, self._cache_key(entry))
        if cached is None:
            return False
        row = hit_row(
            cached,
            run_id=self.run_id,
            item=item,
            model=self.job.variant(item.variant).request.model,
            api=self.job.request.api_spec.name,
            request_hash=entry.request_hash,
            at=self._wall(),
            queue_s=0.0,
        )
        self.writer.add(row, ())
        self.recorder.rows["ok"] += 1
        if self.writer.pending >= FLUSH_ROWS:
            await self.recorder.flush()  # a folder of hits is never held in memory whole
        return True

    async def _send_new(self, group: list[tuple[Entry, bytes]]) -> None:
        if await asyncio.to_thread(cancel_requested, self.run_dir):
            self.canceling = True
            return
        record = await self._new_record(group)
        self.state.records.append(record)
        await self._post(record)

    async def _new_record(self, group: list[tuple[Entry, bytes]], seq: int = 0) -> BatchRecord:
        entries, wires = [e for e, _ in group], [w for _, w in group]
        record = BatchRecord(
            seq=seq or self.state.next_seq(),
            count=len(group),
            bytes=len(body(wires)),
            intent_at=self._wall().isoformat(),
        )
        await asyncio.to_thread(write_batch_files, self.run_dir, record, entries, wires)
        self._unsent.add(record.seq)
        return record

    async def _post(self, record: BatchRecord) -> bool:
        """Try to create ``record``'s batch; ``True`` when its fate is settled."""
        payload = await asyncio.to_thread(lambda: body(iter_wires(self.run_dir, record)))
        record.sent_at = self._wall().isoformat()
        self.save()  # from here on the batch may exist
        self._unsent.discard(record.seq)
        try:
            batch, request_id = await self.api.create(payload)
            batch_id = batch.get("id")
            if not isinstance(batch_id, str):
                raise RetryableError("invalid_response", "the created batch has no id")
        except AttemptError as exc:
            context = {"seq": record.seq, "error_type": exc.error_type, "error": exc.message}
            if not refused(exc):
                log.warning("batchrun.batch.create_in_doubt", **context)
                return False  # reconciled on the next round
            self._unsent.add(record.seq)
            if isinstance(exc, RetryableError):
                n = self._refusals[record.seq] = self._refusals.get(record.seq, 0) + 1
                wait = exc.retry_after if exc.retry_after is not None else self.backoff.wait_s(n)
                self._not_before[record.seq] = self.clock.now() + wait
                log.warning("batchrun.batch.create_refused", **context, wait_s=round(wait, 3))
                return False
            record.status, record.error = "rejected", str(exc)[:300]
            if exc.error_type == "request_too_large" and record.count > 1:
                # The API's limit is tighter than ours: send the requests in two halves.
                halves = await self._halves(record)
                self.state.records.extend(halves)
                self.save()
                log.warning("batchrun.batch.split", **context, into=[r.seq for r in halves])
                return True
            log.error("batchrun.batch.rejected", **context)
            if isinstance(exc, FatalAPIError):
                self.save()  # no rows: a run after the fix sends these requests again
                raise
            now = self._wall()
            await self.recorder.errors(await self._entries(record), exc, BatchTimes(None, now, now))
            self.save()
            return True
        record.id, record.request_id, record.status = batch_id, request_id, "open"
        update_record(record, batch)
        self.save()
        self.created += 1
        self.sent += record.count
        log.info(
            "batchrun.batch.created",
            seq=record.seq,
            batch_id=batch_id,
            requests=record.count,
            bytes=record.bytes,
        )
        return True

    # --- following -------------------------------------------------------------------------

    async def drive(self) -> None:
        """Follow every unfinished record until all are collected, or the session stops."""
        quiet = 0
        while self.state.unfinished() and not self.stop.event.is_set():
            if not self.canceling and await asyncio.to_thread(cancel_requested, self.run_dir):
                self.canceling = True
            progressed = False
            for record in self.state.unfinished():
                if self.stop.event.is_set():
                    return
                try:
                    progressed |= await self._advance(record)
                except FatalAPIError:
                    raise
                except AttemptError as exc:  # tried again on the next round
                    log.warning(
                        "batchrun.batch.call_failed",
                        seq=record.seq,
                        batch_id=record.id,
                        error_type=exc.error_type,
                        error=exc.message,
                    )
            if self.state.unfinished():
                quiet = 0 if progressed else quiet + 1
                await self._wait(self.backoff.wait_s(quiet + 1))

    async def _wait(self, seconds: float) -> None:
        """The injectable sleep, cut short by a stop."""
        sleeper = asyncio.ensure_future(self.sleep(seconds))
        stopper = asyncio.ensure_future(self.stop.event.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            stopper.cancel()

    async def _advance(self, record: BatchRecord) -> bool:
        """One step for one record; ``True`` if a batch was created, adopted, collected or
        given up (polling then starts again from its shortest interval)."""
        if record.status == "intent":
            return await self._advance_intent(record)
        assert record.id is not None
        if self.canceling and record.id not in self._cancel_sent:
            try:
                await self.api.cancel(record.id)
            except PermanentError as exc:  # e.g. it has ended meanwhile
                log.info("batchrun.batch.cancel_refused", batch_id=record.id, error=exc.message)
            else:
                log.info("batchrun.batch.cancel_sent", seq=record.seq, batch_id=record.id)
            self._cancel_sent.add(record.id)
        try:
            batch = await self.api.retrieve(record.id)
            before = (record.processing_status, record.request_counts)
            update_record(record, batch)
            if record.processing_status != "ended":
                if before != (record.processing_status, record.request_counts):
                    self.save()
                    log.info(
                        "batchrun.batch.progress",
                        batch_id=record.id,
                        status=record.processing_status,
                        **record.request_counts,
                    )
                return False  # counts moving is no reason to poll faster
            await self._collect(record, batch)
        except PermanentError as exc:
            await self._lose(record, exc)
        return True

    async def _advance_intent(self, record: BatchRecord) -> bool:
        if record.seq not in self._unsent:
            verdict = await reconcile(
                self.api, self.state, record, self.run_dir, now=self._wall(), save=self.save
            )
            if verdict != "absent":
                return verdict == "adopted"
            self._unsent.add(record.seq)
        if self.canceling:
            record.status, record.error = "rejected", "canceled before it was sent"
            self.save()
            return True
        if self.clock.now() < self._not_before.get(record.seq, 0.0):
            return False
        return await self._post(record)

    # --- collecting ------------------------------------------------------------------------

    async def _collect(self, record: BatchRecord, batch: dict[str, Any]) -> None:
        """An ended batch's results into rows, and its retries into new intent records."""
        retries = await self.recorder.results(
            self.api, self.run_dir, record, batch, may_retry=not self.canceling, now=self._wall()
        )
        follow_ups = await self._follow_ups(record, retries)
        record.status = "collected"
        self.state.records.extend(follow_ups)
        self.save()
        log.info(
            "batchrun.batch.collected",
            seq=record.seq,
            batch_id=record.id,
            **record.request_counts,
            retried=len(retries),
        )

    async def _follow_ups(self, record: BatchRecord, retries: list[Entry]) -> list[BatchRecord]:
        """Intent records (within the limits) for the requests to send again."""
        if not retries:
            return []
        wanted = {e.custom_id: e.retry(record.created_at) for e in retries}
        wires = await asyncio.to_thread(
            lambda: [w for w in iter_wires(self.run_dir, record) if wire_custom_id(w) in wanted]
        )
        splitter = Splitter(self.limits)
        groups = [g for w in wires if (g := splitter.add(wanted[wire_custom_id(w)], w))]
        groups += [rest] if (rest := splitter.rest()) else []
        seq = self.state.next_seq()
        return [await self._new_record(group, seq + i) for i, group in enumerate(groups)]

    async def _halves(self, record: BatchRecord) -> list[BatchRecord]:
        """Two intent records holding ``record``'s requests, half each."""
        group = list(zip(await self._entries(record), await self._wires(record), strict=True))
        middle, seq = len(group) // 2, self.state.next_seq()
        return [
            await self._new_record(group[:middle], seq),
            await self._new_record(group[middle:], seq + 1),
        ]

    async def _wires(self, record: BatchRecord) -> list[bytes]:
        return await asyncio.to_thread(lambda: list(iter_wires(self.run_dir, record)))

    async def _entries(self, record: BatchRecord) -> list[Entry]:
        return await asyncio.to_thread(lambda: list(iter_entries(self.run_dir, record)))

    async def _lose(self, record: BatchRecord, exc: PermanentError) -> None:
        """A batch the API will not give back (gone, or refused): its requests become errors."""
        log.error("batchrun.batch.lost", seq=record.seq, batch_id=record.id, error=str(exc))
        times = times_of(record, {}, self._wall())
        await self.recorder.errors(await self._entries(record), exc, times)
        record.status, record.error = "collected", str(exc)[:300]
        self.save()
