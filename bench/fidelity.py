"""Timing fidelity: how late a client sees each stream's first content, against the simulator's
own record of when it wrote it.

    .venv/bin/python -m bench.fidelity [--concurrency 32 128 512] [--kinds batchrun sdk]
        [--processes 2]

The simulator (its own process) answers after 200 ms and then writes a token every 20 ms; it
notes, per request id, ``perf_counter()`` right after the write of the first content event. The
client notes when it sent each request and when it saw that event (batchrun: ``started_at`` +
``ttft_s`` from ``attempts.parquet``, read back to the monotonic clock through the run's
``Clock``). On Linux ``perf_counter`` is ``CLOCK_MONOTONIC``, one clock for every process on
the host, so the two instants compare directly; the difference is the *excess*: loopback
delivery plus whatever the client's event loop was busy with when the bytes arrived. Every
stream counts; percentiles are over all streams of the run. With ``--processes N``, batchrun
runs as N processes side by side, each on its share of the rows at ``concurrency / N``
(:func:`bench.clients.run_processes`): the total in flight is the same.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import dataclass

from batchrun.sim import SimConfig
from bench.clients import Spec, run_client, run_processes
from bench.simproc import SimProcess, same_clock

__all__ = ["Fidelity", "measure", "percentile"]

TTFT_S = 0.2
INTERVAL_S = 0.02
TOKENS = 50


@dataclass(frozen=True)
class Fidelity:
    """Excess over the simulator's first write, in milliseconds, for one client and load
    (``concurrency`` is the total over its ``processes``)."""

    kind: str
    concurrency: int
    streams: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    processes: int = 1


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0-100) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


def measure(
    kind: str, concurrency: int, *, streams: int | None = None, processes: int = 1
) -> Fidelity:
    if not same_clock():
        raise RuntimeError("perf_counter is not the host-wide monotonic clock here")
    if processes > 1 and kind != "batchrun":
        raise ValueError(f"{kind}: only batchrun runs as several processes")
    streams = streams or max(4 * concurrency, 320)
    config = SimConfig(
        ttft_s=TTFT_S,
        token_interval_s=INTERVAL_S,
        min_output_tokens=TOKENS,
        max_output_tokens=TOKENS,
    )
    with SimProcess(config) as sim:
        if processes > 1:
            spec = Spec(sim.base_url, streams, concurrency // processes, TOKENS + 10, kind)
            outcome = run_processes(spec, processes)
        else:
            outcome = run_client(kind, Spec(sim.base_url, streams, concurrency, TOKENS + 10, kind))
        truth = sim.timings()
    excess = [
        (first - truth[rid][1]) * 1000 for rid, _sent, first in outcome.firsts if rid in truth
    ]
    if len(excess) < streams:
        raise RuntimeError(f"{kind}: only {len(excess)} of {streams} streams matched by request id")
    result = Fidelity(
        kind,
        concurrency,
        streams,
        round(statistics.median(excess), 2),
        round(percentile(excess, 99), 2),
        round(max(excess), 2),
        processes,
    )
    name = f"{kind} x{processes}" if processes > 1 else kind
    print(
        f"  fidelity c={concurrency} {name:<11} p50 {result.p50_ms:7.2f} ms  "
        f"p99 {result.p99_ms:7.2f} ms  max {result.max_ms:7.2f} ms ({streams} streams)",
        file=sys.stderr,
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fidelity", description=__doc__)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--kinds", nargs="+", default=["batchrun", "sdk"])
    parser.add_argument("--streams", type=int, help="default: 4 x concurrency, at least 320")
    parser.add_argument("--processes", type=int, default=1, help="batchrun as N processes")
    args = parser.parse_args(argv)
    for concurrency in args.concurrency:
        for kind in args.kinds:
            processes = args.processes if kind == "batchrun" else 1
            r = measure(kind, concurrency, streams=args.streams, processes=processes)
            print(f"c={concurrency} {kind}: p50 {r.p50_ms} ms, p99 {r.p99_ms} ms, max {r.max_ms}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
