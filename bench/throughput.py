"""Throughput: streams of 200 tokens from a simulator with no delays, events consumed per second.

    .venv/bin/python -m bench.throughput [--streams 1000] [--concurrency 64 1000] [--runs 3]
        [--kinds ...] [--processes 2]

Every client does the same load against one simulator process (a fresh prompt set per run, so
that nothing is cached); each figure is the median of ``--runs`` runs, the clients interleaved
so that a noisy neighbour hurts them alike. Events are the SSE events on the wire (head, one per
token, tail), the same count for every client. ``--processes N`` adds ``batchrun xN``: the same
load as N batchrun processes side by side, each on its share of the rows at the same
concurrency (:func:`bench.clients.run_processes`, what ``--shards N --local`` does), and
``httpx-aiohttp xN``, the bare read as N processes: the ceiling of N processes on this host.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass

from batchrun.sim import SimConfig
from bench.clients import KINDS, Outcome, Spec, run_client, run_processes
from bench.simproc import SimProcess

__all__ = ["BARE", "Throughput", "measure"]

BARE = ("httpx", "httpx-aiohttp")  # the clients that only read the bytes
TOKENS = 200
EVENTS_PER_STREAM = 3 + TOKENS + 3  # message_start, block start, ping | deltas | stop, delta, stop


@dataclass(frozen=True)
class Throughput:
    """Median events per second of each client at one concurrency, and every run's figure."""

    concurrency: int
    streams: int
    events_per_s: dict[str, float]
    runs: dict[str, list[float]]


def measure(
    concurrency: int,
    *,
    streams: int = 1000,
    runs: int = 3,
    kinds: tuple[str, ...] = KINDS,
    processes: int = 1,
) -> Throughput:
    config = SimConfig(
        ttft_s=0, token_interval_s=0, min_output_tokens=TOKENS, max_output_tokens=TOKENS
    )
    several = [f"batchrun x{processes}", f"httpx-aiohttp x{processes}"] if processes > 1 else []
    names = [*kinds, *several]
    figures: dict[str, list[float]] = {name: [] for name in names}
    with SimProcess(config) as sim:
        for run in range(runs):
            for kind in names:
                n = streams
                if kind == "litellm":
                    # ~70x slower than batchrun here: two waves, once, give its rate.
                    if run:
                        continue
                    n = min(streams, 2 * concurrency)
                spec = Spec(sim.base_url, n, concurrency, TOKENS + 50, f"{kind}-{run}")
                outcome = _run(kind, spec, processes)
                if outcome.ok != n:
                    raise RuntimeError(f"{kind}: {outcome.ok} of {n} streams ok")
                figures[kind].append(n * EVENTS_PER_STREAM / outcome.elapsed_s)
                print(
                    f"  throughput c={concurrency} {kind:<14} run {run + 1}: "
                    f"{figures[kind][-1]:>9,.0f} events/s",
                    file=sys.stderr,
                )
    medians = {kind: statistics.median(values) for kind, values in figures.items()}
    return Throughput(concurrency, streams, medians, figures)


def _run(name: str, spec: Spec, processes: int) -> Outcome:
    kind, several, _n = name.partition(" x")
    return run_processes(spec, processes, kind=kind) if several else run_client(kind, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 1000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--processes", type=int, default=1, help="also batchrun as N processes")
    args = parser.parse_args(argv)
    for concurrency in args.concurrency:
        began = time.perf_counter()
        result = measure(
            concurrency,
            streams=args.streams,
            runs=args.runs,
            kinds=tuple(args.kinds),
            processes=args.processes,
        )
        print(f"concurrency {concurrency} ({time.perf_counter() - began:.0f} s):")
        for kind, value in result.events_per_s.items():
            print(f"  {kind:<14} {value:>10,.0f} events/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
