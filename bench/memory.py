"""Memory: peak RSS of ``batchrun JOB`` on a 1,000,000-row Parquet input, by rows done.

    .venv/bin/python -m bench.memory [--rows 1000000] [--run-rows 100000]

The input is generated once (ids and short prompts) under ``--workdir``. The CLI runs in its
own process with ``--limit`` unset against a simulator with no delays and one-token answers;
its ``VmHWM`` (peak RSS, from ``/proc``) is read every 100 ms and noted when the simulator has
finished 10k, 100k, ... streams. With ``--run-rows`` below ``--rows`` the run is stopped by
SIGTERM once that many rows are done (a whole million takes several minutes); the input is the
full file either way, so reading it lazily is what is measured.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import yaml

from batchrun.sim import SimConfig
from bench.clients import MODEL
from bench.simproc import SimProcess

__all__ = ["Memory", "make_input", "measure"]

MARKS = (10_000, 100_000, 1_000_000)


@dataclass
class Memory:
    """Peak RSS in MB when the run had done each mark; ``final_mb`` includes the last flush."""

    rows: int
    done: int = 0
    seconds: float = 0.0
    peak_mb: dict[int, float] = field(default_factory=dict)
    final_mb: float = 0.0


def make_input(path: Path, rows: int) -> None:
    """``rows`` rows of ``id, prompt``, written once and reused."""
    if path.exists() and pl.scan_parquet(path).select(pl.len()).collect().item() == rows:
        return
    ids = pl.int_range(rows, eager=True).cast(pl.String)
    pl.DataFrame(
        {"id": "q" + ids, "prompt": "Summarise item " + ids + " in one word."}
    ).write_parquet(path)


def _vm(pid: int, key: str) -> float:
    """``VmRSS``/``VmHWM`` of ``pid`` in MB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def measure(
    rows: int = 1_000_000, run_rows: int | None = None, workdir: Path | None = None
) -> Memory:
    run_rows = min(run_rows or rows, rows)
    folder = workdir or Path(tempfile.gettempdir()) / "batchrun-bench-memory"
    folder.mkdir(parents=True, exist_ok=True)
    make_input(folder / f"input-{rows}.parquet", rows)
    config = SimConfig(ttft_s=0, token_interval_s=0, min_output_tokens=1, max_output_tokens=1)
    result = Memory(rows)
    with SimProcess(config) as sim, tempfile.TemporaryDirectory(dir=folder) as out:
        job = {
            "name": "memory",
            "input": {
                "path": str(folder / f"input-{rows}.parquet"),
                "id_column": "id",
                "prompt": "{prompt}",
            },
            "request": {"model": MODEL, "max_tokens": 4},
            "endpoint": {"base_url": sim.base_url, "api_key_env": "BENCH_API_KEY"},
            "limits": {"concurrency": 256, "shared": False},
            "output": {"dir": out},
            "telemetry": {"traces": "file"},
        }
        job_path = Path(out) / "job.yaml"
        job_path.write_text(yaml.safe_dump(job), encoding="utf-8")
        env = {**os.environ, "BENCH_API_KEY": "bench-key"}
        began = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-m", "batchrun.cli", str(job_path), "--fresh"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        marks = [m for m in MARKS if m <= run_rows]
        stopped = 0.0
        while child.poll() is None:
            time.sleep(0.1)
            peak = _vm(child.pid, "VmHWM")
            done = sim.completed()
            result.final_mb = max(result.final_mb, peak)
            while marks and done >= marks[0]:
                result.peak_mb[marks.pop(0)] = peak
                print(f"  memory: {done:>9,} rows done, peak RSS {peak:6.1f} MB", file=sys.stderr)
            if done >= run_rows and not stopped:
                child.send_signal(signal.SIGTERM)  # the rows asked for are done: stop here
                stopped = time.perf_counter()
            elif stopped and time.perf_counter() - stopped > 30:
                child.kill()  # past the grace period and then some
        result.done = sim.completed()
        result.seconds = time.perf_counter() - began
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the input file")
    parser.add_argument("--run-rows", type=int, help="stop after this many (default: all)")
    parser.add_argument("--workdir", type=Path, help="where the input is kept between runs")
    args = parser.parse_args(argv)
    r = measure(args.rows, args.run_rows, args.workdir)
    print(f"{r.done:,} of {r.rows:,} rows in {r.seconds:.0f} s; peak RSS by rows done (MB):")
    for mark, mb in r.peak_mb.items():
        print(f"  {mark:>9,}: {mb:.1f}")
    print(f"  at exit: {r.final_mb:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
