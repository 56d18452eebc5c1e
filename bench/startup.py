"""Start-up: wall time of ``batchrun --help`` and ``batchrun validate JOB`` as a user runs them.

    .venv/bin/python -m bench.startup [--runs 9]

Each command runs ``--runs`` times in a fresh process (the installed ``batchrun`` script); the
median is reported. Modules are byte-compiled first, as ``pip install`` leaves them: without
``.pyc`` files (``PYTHONDONTWRITEBYTECODE``, or ``uv pip install`` without
``--compile-bytecode``) every start compiles every module it imports.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

__all__ = ["compile_bytecode", "measure"]

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "jobs" / "eval.yaml"


def compile_bytecode() -> bool:
    """Byte-compile site-packages and batchrun if they are not; True if anything was done."""
    import polars

    probe = importlib.util.cache_from_source(str(Path(polars.__file__)))
    if Path(probe).exists():
        compileall.compile_dir(ROOT / "batchrun", quiet=1)
        return False
    print("  start-up: byte-compiling site-packages (once) ...", file=sys.stderr)
    compileall.compile_dir(sysconfig.get_paths()["purelib"], quiet=1, workers=0)
    compileall.compile_dir(ROOT / "batchrun", quiet=1)
    return True


def _time(argv: list[str]) -> float:
    began = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - began


def measure(runs: int = 9) -> dict[str, float]:
    """Median milliseconds of each command."""
    compile_bytecode()
    script = str(Path(sys.executable).with_name("batchrun"))
    commands = {"--help": [script, "--help"], "validate": [script, "validate", str(JOB)]}
    for argv in commands.values():
        _time(argv)  # warm the page cache
    return {
        name: round(1000 * statistics.median(_time(argv) for _ in range(runs)), 1)
        for name, argv in commands.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args(argv)
    for name, ms in measure(args.runs).items():
        print(f"batchrun {name}: {ms} ms (median of {args.runs})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
