"""``batchrun report``: from run folders to stdout and ``report.html``.

What the command prints is the summary with the sections that apply (or the comparison), as
text or, with ``--json``, as JSON alone; where the page was written goes to stderr with the
logs. The statistics, page and comparison live in their own modules; this one only sequences
them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from batchrun.errors import JobError
from batchrun.report.compare import compare_runs
from batchrun.report.compare_page import write_comparison_html
from batchrun.report.html import write_html
from batchrun.report.load import load_run
from batchrun.report.sections import Options, add_sections, text_sections
from batchrun.report.summary import summarize, to_json
from batchrun.report.text import render_comparison, render_summary

__all__ = ["report_command"]


def report_command(
    run_dirs: Sequence[Path | str],
    *,
    as_json: bool = False,
    html: bool = True,
    rows: int = 20,
    by: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Report on one run folder, or compare two; returns the exit code (0).

    The comparison's page goes into the first folder as ``compare.html``. Raises
    ``NoResultsError`` (exit 2) naming a folder that holds no results, and ``JobError`` (exit 2)
    when ``by`` names a column the run's input lacks, or an input that is gone.
    """
    out, err = out or sys.stdout, err or sys.stderr
    runs = [load_run(path) for path in run_dirs]
    if len(runs) == 2:
        if by is not None:
            raise JobError("report --by takes one run folder, not two")
        comparison = compare_runs(runs[0], runs[1], rows=rows)
        if html:
            _write(lambda: write_comparison_html(runs[0], runs[1], comparison), "compare.html", err)
        print(to_json(comparison) if as_json else render_comparison(comparison), file=out)
        return 0
    (run,) = runs
    summary = add_sections(summarize(run), run, Options(by=by))
    if html:
        _write(lambda: write_html(run, summary, rows=rows), "report.html", err)
    text = to_json(summary) if as_json else render_summary(summary, text_sections(summary))
    print(text, file=out)
    return 0


def _write(write: Callable[[], Path], name: str, err: TextIO) -> None:
    try:
        path = write()
    except OSError as exc:  # a read-only folder still gets its summary
        print(f"batchrun report: warning: could not write {name}: {exc}", file=err)
    else:
        print(f"batchrun report: wrote {path}", file=err)
