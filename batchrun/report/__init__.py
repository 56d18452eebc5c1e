"""Reports on run folders: a summary, a self-contained HTML page with plots, a comparison.

::

    load.py         run folder → RunData (narrow columns in memory; text scanned lazily)
    summary.py      RunData → summary dict (polars; the keys of ``--json``)
    activity.py     outcome, rows covered (--limit), effective concurrency, rows/s over time
    completions.py  the completions shown (slowest, failed, random) and output lengths
    variants.py     the variants of a run side by side
    inputs.py       the run's input files, scanned for a column (``--by``)
    by.py           ``--by COLUMN``: the summary per value of an input column
    sections.py     the sections beyond the summary (variants, --by), listed once for the
                    terminal, --json and the page
    series.py       RunData → bounded plot data (histograms, time bins, top rows)
    svg.py          plot data → inline SVG charts (no dependency, no script)
    page.py         style sheet, figure cards and tables of the page
    html.py         the page → ``report.html`` in the run folder
    compare_page.py two runs side by side → ``compare.html`` in the first folder
    text.py         summary or comparison → plain text for the terminal
    compare.py      two RunData → side-by-side metrics and changed completions
    command.py      the ``batchrun report`` command, sequencing the above

Reading is all this package does to a run folder, apart from writing ``report.html`` (and
``compare.html`` into the first of two folders compared).
"""

from batchrun.report.by import breakdown
from batchrun.report.command import report_command
from batchrun.report.compare import compare_runs
from batchrun.report.html import render_html, write_html
from batchrun.report.load import NoResultsError, RunData, load_run
from batchrun.report.summary import summarize, to_json
from batchrun.report.text import render_comparison, render_summary

__all__ = [
    "NoResultsError",
    "RunData",
    "breakdown",
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
