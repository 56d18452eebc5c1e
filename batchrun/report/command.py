"""``batchrun report``: from run folders to stdout and ``report.html``.

What the command prints is the summary (or the comparison), as text or, with ``--json``, as JSON
alone; where the page was written goes to stderr with the logs. The statistics, page and
comparison live in their own modules; this one only sequences them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from batchrun.report.compare import compare_runs
from batchrun.report.html import write_html
from batchrun.report.load import load_run
from batchrun.report.summary import summarize, to_json
from batchrun.report.text import render_comparison, render_summary

__all__ = ["report_command"]


def report_command(
    run_dirs: Sequence[Path | str],
    *,
    as_json: bool = False,
    html: bool = True,
    rows: int = 20,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Report on one run folder, or compare two; returns the exit code (0).

    Raises ``NoResultsError`` (exit 2) naming a folder that holds no results.
    """
    out, err = out or sys.stdout, err or sys.stderr
    runs = [load_run(path) for path in run_dirs]
    if len(runs) == 2:
        comparison = compare_runs(runs[0], runs[1], rows=rows)
        print(to_json(comparison) if as_json else render_comparison(comparison), file=out)
        return 0
    (run,) = runs
    summary = summarize(run)
    if html:
        try:
            path = write_html(run, summary, rows=rows)
        except OSError as exc:  # a read-only folder still gets its summary
            print(f"batchrun report: warning: could not write report.html: {exc}", file=err)
        else:
            print(f"batchrun report: wrote {path}", file=err)
    print(to_json(summary) if as_json else render_summary(summary), file=out)
    return 0
