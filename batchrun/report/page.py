"""Pieces of the HTML report that are not charts: the style sheet, figure cards and tables.

Markup only, every value escaped; no statistics are computed here and nothing is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from batchrun.report.text import cost_line, judges_line, replaced_line, usd, variant_rows

__all__ = [
    "CSS",
    "NONE",
    "breakdown_panel",
    "breakdown_table",
    "cards",
    "completion_table",
    "facts",
    "grid",
    "ms",
    "panel",
    "row_table",
    "seconds",
    "variants_table",
]

NONE = "\u2013"  # an en dash: shown where there is no value

CSS = """
:root { --ink:#1f2328; --muted:#656d76; --line:#d8dee4; --bg:#f6f8fa; --panel:#fff;
  --ok:#1a7f37; --bad:#cf222e; --warn:#9a6700; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 24px 40px; }
header h1 { margin: 0 0 4px; font-size: 24px; font-weight: 650; }
.meta { margin: 2px 0; color: var(--muted); }
.path { font: 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.badge { display:inline-block; vertical-align: middle; margin-left: 8px; padding: 1px 10px;
  border-radius: 999px; font-size: 12px; font-weight: 600; color: #fff; background: var(--warn); }
.badge.ok { background: var(--ok); }
.badge.warn { background: var(--warn); }
.badge.bad { background: var(--bad); }
.banner { margin: 12px 0 0; padding: 8px 12px; border-radius: 6px; background: #fff8c5;
  border: 1px solid #d4a72c66; }
.cards { display:grid; grid-template-columns: repeat(auto-fit, minmax(128px, 1fr)); gap: 12px;
  margin: 20px 0; }
.card { background: var(--panel); border: 1px solid var(--line); border-radius: 8px;
  padding: 10px 14px; }
.card .k { color: var(--muted); font-size: 12px; white-space: nowrap; }
.card .v { font-size: 21px; font-weight: 650; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
.card .s { color: var(--muted); font-size: 12px; }
.card .v.bad { color: var(--bad); }
.grid { display:grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 16px;
  margin-bottom: 16px; }
.split { display:grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 24px; }
@media (max-width: 900px) { .split { grid-template-columns: 1fr; } }
.panel { background: var(--panel); border: 1px solid var(--line); border-radius: 8px;
  padding: 14px 16px; min-width: 0; }
.panel.wide { margin-bottom: 16px; }
.panel h2 { margin: 0 0 8px; font-size: 15px; font-weight: 600; }
.panel h3 { margin: 10px 0 2px; font-size: 12px; font-weight: 500; color: var(--muted); }
svg.chart { display:block; width: 100%; height: auto; }
svg.chart.empty { max-height: 60px; }
svg text { font-family: inherit; fill: var(--ink); }
svg .tick { font-size: 11px; fill: var(--muted); }
svg .axis { font-size: 11px; fill: var(--muted); }
svg .label { font-size: 12px; }
svg .value { font-size: 12px; fill: var(--muted); font-variant-numeric: tabular-nums; }
svg .mark { font-size: 11px; font-weight: 600; }
svg rect:hover { opacity: .8; }
.note { margin: 4px 0 0; color: var(--muted); font-size: 12px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 8px; border-bottom: 1px solid var(--line); text-align: left;
  white-space: nowrap; }
th { font-size: 12px; font-weight: 600; color: var(--muted); background: var(--bg); }
td.n, th.n { text-align: right; }
td.wrap { white-space: normal; }
td.mono { font: 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
td.msg { white-space: normal; min-width: 240px; color: var(--muted); }
td.ids { font-size: 11px; line-height: 1.35; }
td.ids span { color: var(--muted); }
td.error { color: var(--bad); font-weight: 600; }
td.sub { padding-left: 24px; color: var(--muted); }
table.columns { width: auto; }
table.columns td.n, table.columns th.n { min-width: 140px; padding-left: 24px; }
td.text { white-space: pre-wrap; min-width: 320px; max-width: 640px; font-size: 12px;
  word-break: break-word; }
.side { display:grid; grid-template-columns: 1fr 1fr; gap: 16px; }
footer { margin-top: 24px; color: var(--muted); font-size: 12px; text-align: center; }
"""

_TIMING_NAMES = {
    "ttft_s": "time to first token, ms",
    "tpot_s": "time per output token, ms",
    "e2e_s": "end-to-end latency, ms",
    "queue_s": "queue wait before sending, ms",
    "stream_output_tokens_per_s": "output tokens/s of one stream",
}


def ms(value: float | None) -> str:
    """Seconds shown as milliseconds with one decimal, or an en dash for nothing."""
    return NONE if value is None else f"{value * 1000:,.1f}"


def seconds(value: float | None) -> str:
    """Seconds with three decimals, or an en dash for nothing."""
    return NONE if value is None else f"{value:.3f}"


def panel(title: str, body: str, *, wide: bool = False) -> str:
    """A titled card of the page; ``wide`` spans the whole width."""
    return (
        f'<section class="panel{" wide" if wide else ""}"><h2>{escape(title)}</h2>{body}</section>'
    )


def grid(*panels: str) -> str:
    """Panels side by side, wrapping on a narrow screen."""
    return f'<div class="grid">{"".join(panels)}</div>'


def cards(summary: Mapping[str, Any]) -> str:
    """The row of headline figures."""
    status, rows = summary["status"], summary["rows"]
    ok_share = 100 * status["ok"] / rows if rows else 0.0
    retries = summary["attempts"]["retries"] or 0
    cached = summary.get("cache_hits") or 0
    hits = f" · {cached:,} cached" if cached else ""
    items = [
        ("rows", f"{rows:,}", f"{status['ok']:,} ok · {status['error']:,} error" + hits, ""),
        ("success", f"{ok_share:.1f}%", "rows ending ok", "bad" if status["error"] else ""),
        (
            "in flight",
            _rate(summary["concurrency"]["mean"]),
            _flight(summary["concurrency"]),
            "",
        ),
        ("duration", _duration(summary["duration_s"]), "wall time, active", ""),
        (
            "ok rows/s",
            _rate(summary["throughput"]["ok_per_s"]),
            f"errors {_rate(summary['throughput']['error_per_s'])}/s",
            "",
        ),
        ("output tokens/s", _rate(summary["output_tokens_per_s"]), "over the run", ""),
        _latency_card("TTFT p50", summary["ttft_s"]),
        _latency_card("e2e p50", summary["e2e_s"]),
        ("retries", f"{retries:,}", f"on {summary['attempts']['rows_retried']:,} rows", ""),
        _cost_card(summary["cost"]),
        *_judges_card(summary["cost"]),
    ]
    return (
        '<div class="cards">'
        + "".join(
            f'<div class="card"><div class="k">{escape(k)}</div>'
            f'<div class="v {cls}">{escape(v)}</div>'
            f'<div class="s">{escape(s)}</div></div>'
            for k, v, s, cls in items
        )
        + "</div>"
    )


def facts(summary: Mapping[str, Any]) -> str:
    """Percentiles of every per-request timing, then tokens and attempts."""
    head = "".join(f'<th class="n">{h}</th>' for h in ("rows", "mean", "p50", "p90", "p99", "max"))
    body = []
    for key, name in _TIMING_NAMES.items():
        d = summary[key]
        show = _rate if key == "stream_output_tokens_per_s" else ms
        cells = [f"{d['count']:,}"] + [show(d[k]) for k in ("mean", "p50", "p90", "p99", "max")]
        body.append(
            f"<tr><td>{escape(name)}</td>"
            + "".join(f'<td class="n">{c}</td>' for c in cells)
            + "</tr>"
        )
    tokens, attempts = summary["tokens"], summary["attempts"]
    extra = [
        ("rows from the response cache (no timings)", _count(summary.get("cache_hits") or 0)),
        ("input tokens", _count(tokens["input"])),
        ("output tokens", _count(tokens["output"])),
        ("attempts (first included)", _count(attempts["total"])),
        ("most attempts on one row", _count(attempts["max_per_row"])),
        ("est. cost", cost_line(summary["cost"])),
        *[("judges' est. cost", line) for line in [judges_line(summary["cost"])] if line],
        *[("replaced rows' est. cost", line) for line in [replaced_line(summary["cost"])] if line],
        (
            "retry wait, total / longest (s)",
            f"{seconds(summary['retry_wait_s']['total'])} / "
            f"{seconds(summary['retry_wait_s']['max'])}",
        ),
    ]
    facts_rows = "".join(
        f'<tr><td>{escape(k)}</td><td class="n wrap">{escape(v)}</td></tr>' for k, v in extra
    )
    return (
        f'<div class="split"><div class="scroll"><table><tr><th>timing</th>{head}</tr>'
        f'{"".join(body)}</table></div><div class="scroll"><table><tr><th>totals</th>'
        f'<th class="n">value</th></tr>{facts_rows}</table></div></div>'
    )


def row_table(rows: Sequence[Mapping[str, Any]], *, variant: bool = False) -> str:
    """Rows of results.parquet with their trace and request ids, to look them up; ``variant``
    adds a column of each row's variant."""
    if not rows:
        return "<p>None.</p>"
    head = (
        f"<tr>{_VARIANT_HEAD if variant else ''}<th>id</th><th class='n'>sample</th><th>status</th>"
        "<th>stop / error</th>"
        "<th class='n'>attempts</th><th class='n'>ttft ms</th><th class='n'>e2e ms</th>"
        "<th class='n'>out tokens</th><th>trace_id · request_id</th><th>message</th></tr>"
    )
    body = []
    for row in rows:
        error = row["status"] == "error"
        message = str(row["error_message"] or "")
        body.append(
            f"<tr>{_variant_cell(row) if variant else ''}"
            f"<td class='mono'>{escape(str(row['id']))}</td><td class='n'>{row['sample']}</td>"
            f"<td class='{'error' if error else ''}'>{escape(str(row['status']))}</td>"
            f"<td>{escape(str(row['error_type'] if error else row['stop_reason'] or ''))}</td>"
            f"<td class='n'>{_count(row['attempts'])}</td><td class='n'>{ms(row['ttft_s'])}</td>"
            f"<td class='n'>{ms(row['e2e_s'])}</td>"
            f"<td class='n'>{_count(row['output_tokens'])}</td>"
            f"<td class='mono ids'>{escape(str(row['trace_id'] or NONE))}<br>"
            f"<span>{escape(str(row['request_id'] or NONE))}</span></td>"
            f"<td class='msg'>{escape(message[:300])}</td></tr>"
        )
    return f'<div class="scroll"><table>{head}{"".join(body)}</table></div>'


def completion_table(rows: Sequence[Mapping[str, Any]], *, variant: bool = False) -> str:
    """Rows with their completion (or error), cut short, every value escaped; ``variant`` adds
    a column of each row's variant."""
    if not rows:
        return "<p>None.</p>"
    head = (
        f"<tr>{_VARIANT_HEAD if variant else ''}<th>id</th><th class='n'>sample</th>"
        "<th>stop / error</th><th class='n'>e2e ms</th>"
        "<th class='n'>out tokens</th><th>completion, or the error</th></tr>"
    )
    body = []
    for row in rows:
        error = row["status"] == "error"
        what = row["error_type"] if error else row["stop_reason"]
        text = row["error_message"] if error else row["completion"]
        body.append(
            f"<tr>{_variant_cell(row) if variant else ''}"
            f"<td class='mono'>{escape(str(row['id']))}</td><td class='n'>{row['sample']}</td>"
            f"<td class='{'error' if error else ''}'>{escape(str(what or NONE))}</td>"
            f"<td class='n'>{ms(row['e2e_s'])}</td>"
            f"<td class='n'>{_count(row['output_tokens'])}</td>"
            f"<td class='text'>{escape(str(text if text is not None else NONE))}</td></tr>"
        )
    return f'<div class="scroll"><table>{head}{"".join(body)}</table></div>'


_VARIANT_HEAD = "<th>variant</th>"


def _variant_cell(row: Mapping[str, Any]) -> str:
    return f"<td>{escape(str(row['variant']))}</td>"


def breakdown_table(by: Mapping[str, Any]) -> str:
    """The summary per value of an input column."""
    groups = by["groups"]
    priced = any("cost_usd" in g for g in groups)
    heads = ["rows", "ok", "ok %", "input tokens", "output tokens", "ttft p50 ms"]
    heads += ["e2e p50 ms", "e2e p90 ms", "e2e p99 ms"] + (["est. cost"] if priced else [])
    head = f"<tr><th>{escape(by['column'])}</th>" + "".join(
        f'<th class="n">{escape(h)}</th>' for h in heads
    )

    def row(name: str, g: Mapping[str, Any], cls: str = "") -> str:
        share = NONE if g["ok_share"] is None else f"{100 * g['ok_share']:.1f}"
        cells = [_count(g["rows"]), _count(g["ok"]), share]
        cells += [_count(g["input_tokens"]), _count(g["output_tokens"])]
        cells += [ms(g[k]) for k in ("ttft_s_p50", "e2e_s_p50", "e2e_s_p90", "e2e_s_p99")]
        cells += [usd(g.get("cost_usd"))] if priced else []
        return (
            f"<tr><td{cls}>{escape(name)}</td>"
            + "".join(f'<td class="n">{escape(c)}</td>' for c in cells)
            + "</tr>"
        )

    body = []
    for g in groups:
        body.append(row(str(g["value"]), g))
        body += [row(v["variant"], v, ' class="sub"') for v in g.get("variants", ())]
    more = by["groups_left_off"]
    note = f'<p class="note">… and {more:,} more values (see --json).</p>' if more else ""
    return f'<div class="scroll"><table>{head}</tr>{"".join(body)}</table></div>{note}'


def breakdown_panel(by: Mapping[str, Any]) -> str:
    """The breakdown by an input column as a panel of the page."""
    title = f"By {by['column']} (input column, joined on {by['joined_on']})"
    return panel(title, breakdown_table(by), wide=True)


def _flight(c: Mapping[str, Any]) -> str:
    text = f"mean; peak {c['peak']:,}"
    if c["configured"] is not None:
        text += f" of {c['configured']:,}"
    if c["rate_limited"]:
        text += f"; {c['rate_limited']:,} 429 pauses"
    return text


def _latency_card(name: str, stats: Mapping[str, Any]) -> tuple[str, str, str, str]:
    p50, p99 = stats["p50"], stats["p99"]
    if p50 is None:
        return (name, NONE, "no ok rows", "")
    if p99 < 1:
        return (name, f"{ms(p50)} ms", f"p99 {ms(p99)} ms", "")
    return (name, f"{p50:,.2f} s", f"p99 {p99:,.2f} s", "")


def _cost_card(cost: Mapping[str, Any]) -> tuple[str, str, str, str]:
    own = "batch_usd" if cost["mode"] == "batch" else "stream_usd"
    other = "stream_usd" if own == "batch_usd" else "batch_usd"
    rate = "streaming" if other == "stream_usd" else "batch"
    return (f"est. cost ({cost['mode']})", usd(cost[own]), f"{usd(cost[other])} at {rate} rate", "")


def _judges_card(cost: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
    """The judges' cost beside the generation's, and both together; none without judges."""
    judges = cost.get("judges")
    if not judges:
        return []
    sub = f"{judges['requests']:,} judge requests · total {usd(cost['total_usd'])}"
    return [("judges' est. cost", usd(judges["cost_usd"]), sub, "")]


def _count(value: int | None) -> str:
    return NONE if value is None else f"{value:,}"


def _rate(value: float | None) -> str:
    return NONE if value is None else (f"{value:,.0f}" if value >= 100 else f"{value:.2f}")


def _duration(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.1f} s"


def variants_table(variants: Sequence[Mapping[str, Any]] | None) -> str:
    """The variants side by side, a column each; nothing for a run of one variant."""
    if not variants or len(variants) < 2:
        return ""
    head = "<tr><th>variant</th>" + "".join(
        f'<th class="n">{escape(v["variant"])}</th>' for v in variants
    )
    body = "".join(
        f"<tr><td>{escape(label)}</td>"
        + "".join(f'<td class="n">{escape(cell)}</td>' for cell in cells)
        + "</tr>"
        for label, cells in variant_rows(variants)
    )
    note = (
        '<p class="note">Latencies in ms and one stream\'s output tokens/s, of the rows sent '
        "(response cache hits left out); cost is the rows' own <code>cost_usd</code>.</p>"
    )
    return panel(
        "Variants side by side",
        f'<div class="scroll"><table class="columns">{head}</tr>{body}</table></div>{note}',
        wide=True,
    )
