"""The terminal view: a summary, or two runs side by side, as plain aligned text.

Plain text without colour or box drawing, so it reads the same in a terminal, a pipe, a log and a
cron mail. Formatting only: the numbers come from ``summarize`` and ``compare_runs``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["cost_line", "render_comparison", "render_summary", "usd"]

NONE = "\u2013"  # an en dash: shown where there is no value

_TIMINGS = [("ttft", "ttft_s"), ("tpot", "tpot_s"), ("e2e", "e2e_s"), ("queue", "queue_s")]


def render_summary(summary: Mapping[str, Any]) -> str:
    """The summary of one run, for stdout."""
    s = summary
    status, attempts, tokens = s["status"], s["attempts"], s["tokens"]
    lines = [
        f"run       {s['run_dir']} ({_state(s['state'])})",
        f"          {' · '.join(s['models'])} · {' · '.join(s['apis'])} API · "
        f"run {', '.join(s['run_ids'])}",
    ]
    if s["first_started_at"]:
        lines.append(
            f"          {_when(s['first_started_at'])} → {_when(s['last_finished_at'])} UTC"
        )
    lines += [
        "",
        f"rows      {s['rows']:,}: ok {status['ok']:,} · error {status['error']:,}",
        f"stopped   {_pairs(s['stop_reasons'])}",
        f"tokens    input {_int(tokens['input'])} · output {_int(tokens['output'])}",
        f"cost      {cost_line(s['cost'])}",
        f"duration  {s['duration_s']:.1f} s · {_num(s['requests_per_s'])} requests/s · "
        f"{_num(s['output_tokens_per_s'])} output tokens/s",
        f"attempts  {_int(attempts['total'])}: {_int(attempts['retries'])} retries on "
        f"{attempts['rows_retried']:,} rows, at most {_int(attempts['max_per_row'])} on one row; "
        f"retry wait {_sec(s['retry_wait_s']['total'])} s in all",
        "",
        f"{'time, ms':<10}{'rows':>9}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}",
    ]
    for label, key in _TIMINGS:
        d = s[key]
        lines.append(
            f"{label:<10}{d['count']:>9,}"
            + "".join(f"{_ms(d[k]):>10}" for k in ("mean", "p50", "p90", "p99", "max"))
        )
    per_stream = s["stream_output_tokens_per_s"]
    lines += [
        "output tokens/s of one stream: "
        + " · ".join(f"{k} {_one(per_stream[k])}" for k in ("p50", "p90", "p99")),
        "",
        f"errors    rows ending in error: {_pairs(s['errors'])}",
        f"          failed attempts: {_pairs(s['failed_attempts'])}",
    ]
    return "\n".join(lines)


def render_comparison(comparison: Mapping[str, Any]) -> str:
    """Two runs side by side with deltas, then the rows whose completion changed."""
    a, b = comparison["a"], comparison["b"]
    width = max(len(m["metric"]) for m in comparison["metrics"]) + 2
    lines = [
        f"A  {a['run_dir']} ({_state(a['state'])}; {' · '.join(a['models'])})",
        f"B  {b['run_dir']} ({_state(b['state'])}; {' · '.join(b['models'])})",
        "",
        f"{'':<{width}}{'A':>14}{'B':>14}{'B - A':>14}{'change':>10}",
    ]
    for m in comparison["metrics"]:
        rel = "" if m["relative"] is None else f"{100 * m['relative']:+.1f}%"
        lines.append(
            f"{m['metric']:<{width}}{_cell(m['a']):>14}{_cell(m['b']):>14}"
            f"{_cell(m['delta'], signed=True):>14}{rel:>10}"
        )
    c = comparison["completions"]
    lines += [
        "",
        f"completions: {c['changed']:,} of {c['compared']:,} (id, sample) pairs in both runs "
        f"changed; only in A: {c['only_in_a']:,}; only in B: {c['only_in_b']:,}",
    ]
    for row in c["rows"]:
        lines.append(f"  {row['id']} #{row['sample']}")
        for side in ("a", "b"):
            r = row[side]
            what = r["stop_reason"] if r["status"] == "ok" else r["error_type"]
            lines.append(f"    {side.upper()} {r['status']}/{what}: {_snippet(r['completion'])}")
    if c["changed"] > len(c["rows"]):
        lines.append(f"  … and {c['changed'] - len(c['rows']):,} more (--rows N shows more)")
    return "\n".join(lines)


def cost_line(cost: Mapping[str, Any]) -> str:
    """The cost estimate in words: both rates, the run's mode, and the models without a price."""
    if cost["stream_usd"] is None:
        return "no token counts to price"
    line = (
        f"est. {usd(cost['stream_usd'])} at the streaming rate · {usd(cost['batch_usd'])} in "
        f"batches (this run: {cost['mode']} mode; the job's price table)"
    )
    if cost["unpriced_models"]:
        line += f"; no price for {', '.join(cost['unpriced_models'])}"
    return line


def usd(value: float | None) -> str:
    """Dollars: cents, or four decimals below a cent."""
    if value is None:
        return NONE
    return f"${value:,.2f}" if value >= 0.01 or value == 0 else f"${value:.4f}"


def _state(state: str) -> str:
    if state == "partial":
        return "partial: read from checkpoints"
    return "no run.json" if state == "unknown" else state


def _when(iso: str | None) -> str:
    return "?" if iso is None else iso[:19].replace("T", " ")


def _pairs(counts: Mapping[str, int]) -> str:
    return " · ".join(f"{key} {n:,}" for key, n in counts.items()) or "none"


def _int(value: int | None) -> str:
    return NONE if value is None else f"{value:,}"


def _sec(value: float | None) -> str:
    return NONE if value is None else f"{value:.3f}"


def _ms(value: float | None) -> str:
    return NONE if value is None else f"{value * 1000:,.1f}"


def _one(value: float | None) -> str:
    return NONE if value is None else f"{value:,.1f}"


def _num(value: float | None) -> str:
    if value is None:
        return NONE
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def _cell(value: float | int | None, *, signed: bool = False) -> str:
    if value is None:
        return NONE
    if isinstance(value, int):
        return f"{value:+,}" if signed else f"{value:,}"
    text = f"{value:+,.3f}" if signed else f"{value:,.3f}"
    return text if abs(value) < 1e5 else f"{value:+,.0f}" if signed else f"{value:,.0f}"


def _snippet(text: str | None, length: int = 90) -> str:
    if text is None:
        return "(no completion)"
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= length else flat[: length - 1] + "…")
