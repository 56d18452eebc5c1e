"""Stage 2, schedule: the hard spend cap (``limits.max_cost_usd``), a ledger of dollars.

The run folder's spend (every session's rows, read when the run starts, and what rows replaced
since had cost: ``replaced_usd`` in run.json) plus what requests in flight hold must stay within
the cap. A request holds its worst case before it starts: its input estimate (the API's own, as
the rate budget takes it; with ``prompt_cache`` every input token priced as a cache write) plus
``max_tokens`` of output, at the model's price. When it ends the hold is replaced by the row's
``cost_usd``, the figure ``results.parquet`` keeps, so the ledger and a later run's reading of
the folder agree. Failed attempts that left no usage in the row cost nothing here. Requests take
their turn in order: when the next one does not fit, it waits for holds in flight to return;
when it cannot fit even with none in flight, the ledger is capped and dispatch stops. Knows
nothing of HTTP or files beyond reading the folder's spend.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from batchrun.record.cost import estimate_cost, rates_for

if TYPE_CHECKING:
    from batchrun.apis import Api
    from batchrun.job.prices import CacheRates
    from batchrun.job.schema import Job

__all__ = [
    "REPLACED",
    "Hold",
    "SpendLedger",
    "folder_spent",
    "judges_spent",
    "replaced_spent",
    "rows_spent",
    "worst_case_usd",
]

REPLACED = "replaced_usd"  # run.json: what rows replaced since (--rerun-changed) had cost


def worst_case_usd(
    api: Api, body: Mapping[str, Any], rates: CacheRates, prompt_cache: str | None
) -> float:
    """The most ``body`` may cost: its estimated input at the input rate (with a prompt cache,
    the cache-write rate of its TTL when that is higher) and ``max_tokens`` of output."""
    input_rate = rates.input
    if prompt_cache == "5m":
        input_rate = max(input_rate, rates.cache_write_5m)
    elif prompt_cache == "1h":
        input_rate = max(input_rate, rates.cache_write_1h)
    tokens_in, tokens_out = api.estimate_input_tokens(body), api.output_reservation(body)
    return (tokens_in * input_rate + tokens_out * rates.output) / 1e6


def folder_spent(job: Job, run_dir: Path) -> float:
    """What the rows already in ``run_dir`` cost: the sum of their ``cost_usd`` (rows from
    before that column are priced from their tokens), the judges' requests of its scorers
    included (``judge/<scorer>/``, streamed): the cap is the run folder's, scoring and all."""
    own = _spent(run_dir, job.prices, job.request.mode) + replaced_spent(run_dir)
    return own + judges_spent(job, run_dir)


def rows_spent(job: Job, run_dir: Path, run_id: str | None = None) -> float:
    """What the rows in ``run_dir``'s results cost (of the run ``run_id`` only, if given)."""
    return _spent(run_dir, job.prices, job.request.mode, run_id)


def replaced_spent(run_dir: Path) -> float:
    """What rows no longer in ``run_dir``'s results had cost when sent (rows a later run
    replaced: ``--rerun-changed``, ``--retry-errors``), as its run.json carries it on: spent
    all the same, so the cap counts it."""
    from batchrun.record.manifest import read_manifest

    value = read_manifest(run_dir).get(REPLACED)
    return float(value) if isinstance(value, int | float) else 0.0


def judges_spent(job: Job, run_dir: Path) -> float:
    """What the judges' requests of ``run_dir``'s scorers cost (``judge/<scorer>/``, streamed);
    0 without any."""
    from batchrun.record.folder import JUDGE_DIR  # the folder's layout: only when asked

    judges = run_dir / JUDGE_DIR
    if not judges.is_dir():
        return 0.0
    return sum(_spent(d, job.prices, "stream") for d in judges.iterdir() if d.is_dir())


def _spent(run_dir: Path, prices: Mapping[str, Any], mode: str, run_id: str | None = None) -> float:
    """The sum of the cost of one run folder's result rows (0 when it has none)."""
    from batchrun.record.parquet import scan_table  # the folder's reader: only when capped

    if not (run_dir / "results.parquet").exists() and not (run_dir / "parts").is_dir():
        return 0.0
    results: pl.LazyFrame = scan_table(run_dir, "results")
    if run_id is not None:
        results = results.filter(pl.col("run_id") == run_id)
    cost = estimate_cost(results, prices, mode)["cost_usd"]
    return float(cost or 0.0)


@dataclass(slots=True)
class Hold:
    """One request's reservation, until it is settled."""

    usd: float
    settled: bool = False


@dataclass
class SpendLedger:
    """The spend of one run folder against ``cap_usd`` (``None``: no cap, nothing counted).

    ``on_capped`` is called once, when the first request does not fit. While ``halted()``
    (the run stopping for another reason, a signal), a waiting request gives up, not started.
    A request is priced by its variant's model and ``prompt_cache`` (``pricing``, by variant
    name); ``rates`` and ``prompt_cache`` price a variant not in it.
    """

    cap_usd: float | None = None
    spent_usd: float = 0.0
    held_usd: float = 0.0
    capped: bool = False
    on_capped: Callable[[], None] = lambda: None
    halted: Callable[[], bool] = lambda: False
    rates: CacheRates | None = None
    prompt_cache: str | None = None
    pricing: dict[str, tuple[CacheRates | None, str | None]] = field(default_factory=dict)
    _turn: asyncio.Lock = field(default_factory=asyncio.Lock)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def for_job(
        cls,
        job: Job,
        on_capped: Callable[[], None],
        halted: Callable[[], bool] = lambda: False,
    ) -> SpendLedger:
        """The ledger of ``job`` at its mode's prices (batch: half), each variant at its
        model's."""
        mode = job.request.mode
        return cls(
            cap_usd=job.limits.max_cost_usd,
            on_capped=on_capped,
            halted=halted,
            pricing={
                v.name: (rates_for(v.request.model, job.prices, mode), v.request.prompt_cache)
                for v in job.effective_variants
            },
        )

    def worst_case(self, api: Api, body: Mapping[str, Any], variant: str = "default") -> float:
        """What ``body`` (a request of ``variant``) holds while in flight (0 without a cap)."""
        rates, prompt_cache = self.pricing.get(variant, (self.rates, self.prompt_cache))
        if self.cap_usd is None or rates is None:
            return 0.0
        return worst_case_usd(api, body, rates, prompt_cache)

    def fits(self, usd: float) -> bool:
        """Whether ``usd`` more may be held now."""
        return self.cap_usd is None or self.spent_usd + self.held_usd + usd <= self.cap_usd

    async def reserve(
        self, api: Api, body: Mapping[str, Any], variant: str = "default"
    ) -> Hold | None:
        """Hold ``body``'s worst case (a request of ``variant``), waiting (in turn) for holds in
        flight to return while it does not fit; ``None`` once the cap is reached: the request
        must not start."""
        usd = self.worst_case(api, body, variant)
        if self.cap_usd is None:
            return Hold(usd)
        async with self._turn:  # first come, first served: rows go out in order
            while not self.capped and not self.halted():
                if self.fits(usd):
                    self.held_usd += usd
                    return Hold(usd)
                if self.held_usd <= 0 or self.spent_usd + usd > self.cap_usd:
                    self.stop()
                    break
                changed = self._changed
                await changed.wait()
        return None

    def take(self, usd: float) -> bool:
        """Hold ``usd`` at once if it fits (batch mode: a request joining a batch). When it
        does not, the ledger is capped without ``on_capped``: batches already sent are still
        followed to their end."""
        if self.capped or not self.fits(usd):
            self.capped = True
            return False
        self.held_usd += usd
        return True

    def settle(self, hold: Hold, cost_usd: float | None) -> None:
        """``hold`` ended: it costs ``cost_usd`` (``None``: nothing) instead. Once only."""
        if hold.settled or self.cap_usd is None:
            return
        hold.settled = True
        self.held_usd = max(0.0, self.held_usd - hold.usd)
        self.spent_usd += cost_usd or 0.0
        self._changed.set()
        self._changed = asyncio.Event()

    def stop(self) -> None:
        """The cap is reached: no more holds; tell the run once."""
        if not self.capped:
            self.capped = True
            self.on_capped()
        self._changed.set()

    def summary(self, rows_left: int) -> dict[str, Any]:
        """run.json's ``spend``."""
        return {
            "cap_usd": self.cap_usd,
            "spent_usd": round(self.spent_usd, 6),
            "rows_left": rows_left,
        }

    def message(self, rows_left: int) -> str:
        """The closing line of a capped run."""
        return (
            f"the spend cap stopped the run: spent ${self.spent_usd:,.6f} of the cap "
            f"${self.cap_usd:,.6f} (limits.max_cost_usd); {rows_left:,} request(s) left, "
            "not sent. Raise limits.max_cost_usd (e.g. --set limits.max_cost_usd=...) and run "
            "again to go on"
        )
