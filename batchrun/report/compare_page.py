"""The comparison page: two runs side by side, as one self-contained ``compare.html``.

Each run's header and headline figures in its own column, the metrics with their deltas (and
per variant, with variants), the same charts for A and B next to each other, and the rows whose
completion changed with A's and B's text side by side. Written into the first run's folder. The
numbers come from ``compare_runs``; this module renders and writes, and computes nothing of its
own.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

from batchrun.report.html import (
    document,
    finish_rate_chart,
    header,
    latency_chart,
    lengths_chart,
    write_page,
)
from batchrun.report.load import RunData
from batchrun.report.page import NONE, cards, grid, panel
from batchrun.report.text import key_words, metric_cells

__all__ = ["render_comparison_html", "write_comparison_html"]


def write_comparison_html(a: RunData, b: RunData, comparison: Mapping[str, Any]) -> Path:
    """Write ``compare.html`` into ``a``'s folder (atomically) and return its path."""
    return write_page(a.run_dir / "compare.html", render_comparison_html(a, b, comparison))


def render_comparison_html(a: RunData, b: RunData, comparison: Mapping[str, Any]) -> str:
    """The page as text."""
    sa, sb = comparison["a"], comparison["b"]
    sections = [
        _side(
            f"A · {a.name}", header(a, sa) + cards(sa), f"B · {b.name}", header(b, sb) + cards(sb)
        ),
        panel("Metrics, B against A", _metrics(comparison["metrics"]), wide=True),
        *(
            [panel("Variants, B against A", _variants(comparison["variants"]), wide=True)]
            if comparison.get("variants")
            else []
        ),
        grid(
            panel("A: end-to-end latency", latency_chart(a, "e2e_s", sa["e2e_s"])),
            panel("B: end-to-end latency", latency_chart(b, "e2e_s", sb["e2e_s"])),
        ),
        grid(
            panel("A: time to first token", latency_chart(a, "ttft_s", sa["ttft_s"])),
            panel("B: time to first token", latency_chart(b, "ttft_s", sb["ttft_s"])),
        ),
        grid(
            panel("A: output length of ok rows", lengths_chart(a, sa)),
            panel("B: output length of ok rows", lengths_chart(b, sb)),
        ),
        grid(
            panel("A: rows finished per second", finish_rate_chart(a)),
            panel("B: rows finished per second", finish_rate_chart(b)),
        ),
        panel("Completions that changed", _changed(comparison["completions"]), wide=True),
    ]
    return document(f"batchrun comparison · {a.name} vs {b.name}", sections)


def _side(title_a: str, body_a: str, title_b: str, body_b: str) -> str:
    return (
        f'<div class="side"><section><h2>{escape(title_a)}</h2>{body_a}</section>'
        f"<section><h2>{escape(title_b)}</h2>{body_b}</section></div>"
    )


def _metrics(metrics: list[Mapping[str, Any]]) -> str:
    head = (
        '<tr><th>metric</th><th class="n">A</th><th class="n">B</th><th class="n">B &minus; A</th>'
        '<th class="n">change</th></tr>'
    )
    body = []
    for m in metrics:
        cells = metric_cells(m)
        body.append(
            f"<tr><td>{escape(m['metric'])}</td>"
            + "".join(f'<td class="n">{escape(c)}</td>' for c in cells)
            + "</tr>"
        )
    return f'<div class="scroll"><table>{head}{"".join(body)}</table></div>'


def _variants(variants: list[Mapping[str, Any]]) -> str:
    """Each variant's figures, B against A, with its rows matched on (variant, id, sample)."""
    parts = []
    for v in variants:
        m = v["completions"]
        absent = ("" if v["a"] else " (not in A)") + ("" if v["b"] else " (not in B)")
        parts.append(
            f"<h3>{escape(v['variant'])}{absent}</h3>"
            f'<p class="note">{m["compared"]:,} (variant, id, sample) keys in both runs, '
            f"{m['changed']:,} changed; only in A: {m['only_in_a']:,}; only in B: "
            f"{m['only_in_b']:,}.</p>{_metrics(v['metrics'])}"
        )
    note = (
        '<p class="note">Latencies in seconds, of the rows sent (response cache hits left out); '
        "cost is the rows' own <code>cost_usd</code>.</p>"
    )
    return "".join(parts) + note


def _changed(c: Mapping[str, Any]) -> str:
    intro = (
        f'<p class="note">{c["changed"]:,} of {c["compared"]:,} {escape(key_words(c["key"]))} '
        f"in both runs changed; only in A: {c['only_in_a']:,}; only in B: "
        f"{c['only_in_b']:,}.</p>"
    )
    if not c["rows"]:
        return intro
    variant = "variant" in c["key"]
    head = (
        f"<tr>{'<th>variant</th>' if variant else ''}<th>id</th><th class='n'>sample</th>"
        "<th>A</th><th>B</th></tr>"
    )
    body = "".join(
        f"<tr>{_variant(row) if variant else ''}"
        f"<td class='mono'>{escape(str(row['id']))}</td><td class='n'>{row['sample']}</td>"
        f"{_side_cell(row['a'])}{_side_cell(row['b'])}</tr>"
        for row in c["rows"]
    )
    more = c["changed"] - len(c["rows"])
    note = f'<p class="note">… and {more:,} more (--rows N shows more).</p>' if more > 0 else ""
    return f'{intro}<div class="scroll"><table>{head}{body}</table></div>{note}'


def _variant(row: Mapping[str, Any]) -> str:
    return f"<td>{escape(str(row['variant']))}</td>"


def _side_cell(row: Mapping[str, Any]) -> str:
    what = row["stop_reason"] if row["status"] == "ok" else row["error_type"]
    text = row["completion"]
    return (
        f"<td class='text'><b>{escape(str(row['status']))}/{escape(str(what or NONE))}</b>\n"
        f"{escape(text if text is not None else '(no completion)')}</td>"
    )
