"""Every benchmark of issue 7, one table: ``make bench`` (or ``python -m bench``).

    .venv/bin/python -m bench [--quick] [--full] [--json FILE]

Baselines are measured in the same run, against the same simulator: the official SDK
(``AsyncAnthropic`` + ``messages.stream`` + a semaphore) and bare httpx clients that only read
the bytes (httpx's own transport, and the aiohttp transport batchrun uses: the ceiling). The
simulator always runs in a process of its own. ``--full`` runs the memory benchmark to the
millionth row (13-17 minutes more); by default it stops at 100,000 rows of the million-row
input. ``--quick`` is a smoke run with smaller loads, for checking the harness.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench import fidelity, memory, startup, throughput


def _machine() -> str:
    import os

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()}"
    )


def _table(results: dict[str, Any]) -> str:
    lines = [
        f"{'benchmark':<34} {'batchrun':>12} {'SDK':>10} {'vs SDK':>7} {'bare read':>10} "
        f"{'vs bare':>7}  {'target':<26} met",
    ]
    lines.append("-" * len(lines[0]))
    for t in results["throughput"]:
        e = t["events_per_s"]
        ceiling = max(e["httpx"], e["httpx-aiohttp"])
        vs_sdk, vs_bare = e["batchrun"] / e["sdk"], e["batchrun"] / ceiling
        ok = vs_sdk >= 5 and vs_bare >= 0.5
        lines.append(
            f"{'throughput c=' + str(t['concurrency']) + ', events/s':<34} "
            f"{e['batchrun']:>12,.0f} {e['sdk']:>10,.0f} {vs_sdk:>6.1f}x {ceiling:>10,.0f} "
            f"{vs_bare:>7.2f}  {'>=5x SDK, >=0.5x bare':<26} {'yes' if ok else 'NO'}"
        )
    sdk = {f["concurrency"]: f for f in results["fidelity"] if f["kind"] == "sdk"}
    for f in (f for f in results["fidelity"] if f["kind"] == "batchrun"):
        c = f["concurrency"]
        other = sdk.get(c)
        theirs = f"{other['p50_ms']:.1f}/{other['p99_ms']:.1f}" if other else "-"
        ours = f"{f['p50_ms']:.2f}/{f['p99_ms']:.2f}"
        target = "p50<1, p99<5 ms" if c == 128 else "(reported)"
        met = ("yes" if f["p50_ms"] < 1 and f["p99_ms"] < 5 else "NO") if c == 128 else "-"
        lines.append(
            f"{'ttft excess c=' + str(c) + ', p50/p99 ms':<34} {ours:>12} {theirs:>10} "
            f"{'':>7} {'':>10} {'':>7}  {target:<26} {met}"
        )
    m = results["memory"]
    marks = " / ".join(f"{mb:.0f}" for mb in m["peak_mb"].values())
    names = "/".join(f"{k // 1000}k" for k in m["peak_mb"])
    flat = max(m["peak_mb"].values()) - min(m["peak_mb"].values()) if m["peak_mb"] else 0
    ok = m["final_mb"] < 300 and flat < 50
    lines.append(
        f"{'peak RSS MB at ' + names:<34} {marks:>23} {'':>7} {'':>10} {'':>7}  "
        f"{'<300 MB, flat':<26} {'yes' if ok else 'NO'}"
    )
    lines.append(
        f"{'  (at exit, after compaction)':<34} {m['final_mb']:>12.0f} {'':>10} {'':>7} "
        f"{'':>10} {'':>7}  {m['done']:,} of {m['rows']:,} rows, {m['seconds']:.0f} s"
    )
    for name, ms in results["startup"].items():
        lines.append(
            f"{'start-up: batchrun ' + name + ', ms':<34} {ms:>12.0f} {'':>10} {'':>7} "
            f"{'':>10} {'':>7}  {'<300 ms':<26} {'yes' if ms < 300 else 'NO'}"
        )
    bare = ", ".join(
        f"c={t['concurrency']}: httpx transport {t['events_per_s']['httpx']:,.0f}, "
        f"aiohttp transport {t['events_per_s']['httpx-aiohttp']:,.0f}"
        for t in results["throughput"]
    )
    lines += [
        "",
        f"bare read (events/s) = the faster of two bare httpx clients; {bare}.",
        "SDK = AsyncAnthropic + messages.stream + a semaphore; ttft excess = when the client saw",
        "the first content minus when the simulator wrote it (same host clock).",
        f"machine: {_machine()}; {results['seconds']:.0f} s in all.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small loads: check the harness")
    parser.add_argument("--full", action="store_true", help="memory benchmark to 1,000,000 rows")
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    results: dict[str, Any] = {}
    print("start-up ...", file=sys.stderr)
    results["startup"] = startup.measure(runs=3 if args.quick else 9)
    print("throughput ...", file=sys.stderr)
    results["throughput"] = [
        asdict(
            throughput.measure(c, streams=200 if args.quick else 1000, runs=1 if args.quick else 3)
        )
        for c in (64, 1000)
    ]
    print("timing fidelity ...", file=sys.stderr)
    results["fidelity"] = [
        asdict(fidelity.measure(kind, c, streams=c if args.quick else None))
        for c in (32, 128, 512)
        for kind in ("batchrun", "sdk")
    ]
    print("memory ...", file=sys.stderr)
    run_rows = 1_000_000 if args.full else 20_000 if args.quick else 100_000
    results["memory"] = asdict(memory.measure(1_000_000, run_rows))
    results["seconds"] = time.perf_counter() - began
    print(_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
