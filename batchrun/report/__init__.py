"""Reports on run folders: a summary, a self-contained HTML page with plots, a comparison.

::

    load.py     run folder → RunData (final files and checkpoint parts; run.json)
    summary.py  RunData → summary dict (polars; the keys of ``--json``)
    series.py   RunData → bounded plot data (histograms, time bins, top rows)
    svg.py      plot data → inline SVG charts (no dependency, no script)
    page.py     style sheet, figure cards and tables of the page
    html.py     the page → ``report.html`` in the run folder
    text.py     summary or comparison → plain text for the terminal
    compare.py  two RunData → side-by-side metrics and changed completions
    command.py  the ``batchrun report`` command, sequencing the above

Reading is all this package does to a run folder, apart from writing ``report.html``.
"""

from batchrun.report.command import report_command
from batchrun.report.compare import compare_runs
from batchrun.report.html import render_html, write_html
from batchrun.report.load import NoResultsError, RunData, load_run
from batchrun.report.summary import summarize, to_json
from batchrun.report.text import render_comparison, render_summary

__all__ = [
    "NoResultsError",
    "RunData",
    "compare_runs",
    "load_run",
    "render_comparison",
    "render_html",
    "render_summary",
    "report_command",
    "summarize",
    "to_json",
    "write_html",
]
