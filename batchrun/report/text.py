"""The terminal view: a summary, or two runs side by side, as plain aligned text.

Plain text without colour or box drawing, so it reads the same in a terminal, a pipe, a log and a
cron mail. Formatting only: the numbers come from ``summarize`` and ``compare_runs``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from batchrun.schedule.spend import REPLACED

__all__ = [
    "cost_line",
    "judges_line",
    "key_words",
    "metric_cells",
    "render_breakdown",
    "render_comparison",
    "render_summary",
    "render_variants",
    "replaced_line",
    "row_key",
    "sparkline",
    "tokens_note",
    "usd",
    "variant_rows",
]

NONE = "\u2013"  # an en dash: shown where there is no value

_TIMINGS = [("ttft", "ttft_s"), ("tpot", "tpot_s"), ("e2e", "e2e_s"), ("queue", "queue_s")]


def render_summary(summary: Mapping[str, Any], sections: Sequence[str] = ()) -> str:
    """The summary of one run, for stdout; ``sections`` (the text of the report's sections that
    apply, see ``sections.py``) go after the figures, before the run over time."""
    s = summary
    status, attempts = s["status"], s["attempts"]
    throughput = s["throughput"]
    lines = [
        f"run       {s['run_dir']} ({_state(s['state'], s['state_line'])})",
        f"          {' · '.join(s['models'])} · {' · '.join(s['apis'])} API · "
        f"run {', '.join(s['run_ids'])}",
    ]
    if s["shards_line"]:
        lines.append(f"          {s['shards_line']}")
    if s["first_started_at"]:
        lines.append(
            f"          {_when(s['first_started_at'])} → {_when(s['last_finished_at'])} UTC"
        )
    outcome = s["outcome"]
    lines += [
        "",
        f"outcome   {_LEVELS[outcome['level']]}: {outcome['text']}",
        f"rows      {s['rows']:,}: ok {status['ok']:,} · error {status['error']:,}"
        + _hits(s.get("cache_hits") or 0),
        f"stopped   {_pairs(s['stop_reasons'])}",
        f"tokens    {_tokens(s)}",
        f"cost      {cost_line(s['cost'])}",
        *([f"judges    {judges}"] if (judges := judges_line(s["cost"])) else []),
        *([f"replaced  {replaced}"] if (replaced := replaced_line(s["cost"])) else []),
        f"duration  {s['duration_s']:.1f} s · {_num(throughput['ok_per_s'])} ok rows/s "
        f"(errors {_num(throughput['error_per_s'])}/s) · "
        f"{_num(s['output_tokens_per_s'])} output tokens/s",
        f"          {_concurrency(s['concurrency'])}",
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
    length = s["output_length"]
    lines += [
        "output tokens/s of one stream: "
        + " · ".join(f"{k} {_one(per_stream[k])}" for k in ("p50", "p90", "p99")),
        f"output length, {length['unit']} of ok rows: "
        + " · ".join(f"{k} {_one(length[k])}" for k in ("mean", "p50", "p90", "p99", "max")),
        "",
        f"errors    rows ending in error: {_pairs(s['errors'])}",
        f"          failed attempts: {_pairs(s['failed_attempts'])}",
    ]
    for text in sections:
        lines += ["", text]
    if s["over_time"]:
        over = s["over_time"]
        peak = max(over["ok_per_s"] + over["error_per_s"], default=0.0)
        # In flight is drawn against the configured limit: a full block is the limit reached.
        limit = max([s["concurrency"]["configured"] or 0.0, *over["in_flight"]])
        lines += [
            "",
            f"over the run ({_span(over['bin_s'])} a column; a full block is {_num(peak)} "
            f"rows/s, or {_one(limit)} in flight)",
            f"  ok/s      {sparkline(over['ok_per_s'], peak)}",
            f"  errors/s  {sparkline(over['error_per_s'], peak)}",
            f"  in flight {sparkline(over['in_flight'], limit)}",
        ]
    lines += _completions(s["completions"], variants=len(s.get("variants") or ()) > 1)
    return "\n".join(lines)


_LEVELS = {"ok": "OK", "warn": "WARNING", "bad": "FAILED"}
_BLOCKS = " ▁▂▃▄▅▆▇█"
_PICKED = {"slowest": "slowest ok", "failed": "failed", "random": "random (fixed picks)"}


def sparkline(values: list[float], top: float | None = None) -> str:
    """One character a value, from blank (0) to a full block (``top``, default the maximum)."""
    top = max(values, default=0.0) if top is None else top
    if top <= 0:
        return _BLOCKS[0] * len(values) + "|"
    steps = len(_BLOCKS) - 1
    return (
        "".join(
            _BLOCKS[0 if v <= 0 else max(1, min(steps, round(steps * v / top)))] for v in values
        )
        + "|"
    )


def tokens_note(summary: Mapping[str, Any]) -> str | None:
    """Why there are no token counts, in the words of the run's API; None when there are."""
    if summary["tokens"]["output"] is not None:
        return None
    if summary.get("api") == "complete" or summary["apis"] == ["complete"]:
        return "none: the legacy complete API reports no token counts"
    if summary["status"]["ok"] == 0:
        return "none: no row succeeded"
    return "none reported"


def _tokens(s: Mapping[str, Any]) -> str:
    note = tokens_note(s)
    if note is not None:
        return note
    tokens = s["tokens"]
    return f"input {_int(tokens['input'])} · output {_int(tokens['output'])}"


def _limit(c: Mapping[str, Any]) -> str:
    """``limits.concurrency`` as it bounded the run: of each shard, times the shards."""
    shards = c.get("shards") or 1
    if shards == 1:
        return f"{c['configured']:,}"
    return f"{c['configured'] // shards:,} in each of {shards} shards"


def _concurrency(c: Mapping[str, Any]) -> str:
    configured = "" if c["configured"] is None else f" (limits.concurrency {_limit(c)})"
    line = f"in flight: mean {_one(c['mean'])} · peak {c['peak']:,}{configured}"
    if c["rate_limited"]:
        line += f"; 429 pauses {c['rate_limited']:,} ({_sec(c['pause_s'])} s asked in all)"
    return line


def _hits(hits: int) -> str:
    if not hits:
        return ""
    return f" · {hits:,} from the response cache (left out of the timings)"


def row_key(row: Mapping[str, Any], *, variant: bool) -> str:
    """How a row is named: ``id #sample``, after its variant when the run has several."""
    key = f"{row['id']} #{row['sample']}"
    return f"{row['variant']} · {key}" if variant else key


def _completions(
    picked: Mapping[str, list[Mapping[str, Any]]], *, variants: bool, shown: int = 3
) -> list[str]:
    lines: list[str] = []
    for kind, rows in picked.items():
        if not rows:
            continue
        lines += ["", f"completions: {_PICKED.get(kind, kind)}"]
        for row in rows[:shown]:
            if row["status"] == "ok":
                what = f"{row['stop_reason']}, {_ms(row['e2e_s'])} ms"
                body = _snippet(row["completion"], 80)
            else:
                what = str(row["error_type"])
                body = _snippet(row["error_message"], 80)
            lines.append(f"  {row_key(row, variant=variants)} ({what}): {body}")
    return lines


def render_comparison(comparison: Mapping[str, Any]) -> str:
    """Two runs side by side with deltas, the same per variant (with variants), then the rows
    whose completion changed."""
    a, b = comparison["a"], comparison["b"]
    variants = comparison.get("variants") or []
    labels = [m["metric"] for m in comparison["metrics"]]
    labels += [m["metric"] for v in variants for m in v["metrics"]]
    width = max(len(label) for label in labels) + 2
    lines = [
        f"A  {a['run_dir']} ({_state(a['state'])}; {' · '.join(a['models'])})",
        f"B  {b['run_dir']} ({_state(b['state'])}; {' · '.join(b['models'])})",
        "",
        *_metric_lines(comparison["metrics"], width),
    ]
    for v in variants:
        m = v["completions"]
        lines += [
            "",
            f"variant {v['variant']}"
            + ("" if v["a"] else " (not in A)")
            + ("" if v["b"] else " (not in B)")
            + f": {m['compared']:,} (variant, id, sample) keys in both runs, "
            f"{m['changed']:,} changed; only in A: {m['only_in_a']:,}; "
            f"only in B: {m['only_in_b']:,}",
            *_metric_lines(v["metrics"], width),
        ]
    c = comparison["completions"]
    variant = "variant" in c["key"]
    lines += [
        "",
        f"completions: {c['changed']:,} of {c['compared']:,} {key_words(c['key'])} in both runs "
        f"changed; only in A: {c['only_in_a']:,}; only in B: {c['only_in_b']:,}",
    ]
    for row in c["rows"]:
        lines.append(f"  {row_key(row, variant=variant)}")
        for side in ("a", "b"):
            r = row[side]
            what = r["stop_reason"] if r["status"] == "ok" else r["error_type"]
            lines.append(f"    {side.upper()} {r['status']}/{what}: {_snippet(r['completion'])}")
    if c["changed"] > len(c["rows"]):
        lines.append(f"  … and {c['changed'] - len(c['rows']):,} more (--rows N shows more)")
    return "\n".join(lines)


def _metric_lines(metrics: Sequence[Mapping[str, Any]], width: int) -> list[str]:
    """A table of compared figures: A, B, their difference and the relative change."""
    lines = [f"{'':<{width}}{'A':>14}{'B':>14}{'B - A':>14}{'change':>10}"]
    for m in metrics:
        a, b, delta, rel = metric_cells(m)
        lines.append(f"{m['metric']:<{width}}{a:>14}{b:>14}{delta:>14}{rel:>10}")
    return lines


def metric_cells(m: Mapping[str, Any]) -> tuple[str, str, str, str]:
    """A compared figure's A, B, difference and relative change as text; a metric named in
    dollars (``... $``) in :func:`usd`, so that a cost below a cent keeps its digits."""
    rel = "" if m["relative"] is None else f"{100 * m['relative']:+.1f}%"
    if m["metric"].endswith(" $"):
        delta = m["delta"]
        signed = NONE if delta is None else ("-" if delta < 0 else "+") + usd(abs(delta))
        return usd(m["a"]), usd(m["b"]), signed, rel
    return _cell(m["a"]), _cell(m["b"]), _cell(m["delta"], signed=True), rel


def key_words(key: Sequence[str]) -> str:
    """What the compared rows are: ``(id, sample) pairs``, or ``(variant, id, sample) keys``."""
    return f"({', '.join(key)}) {'pairs' if len(key) == 2 else 'keys'}"


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
    if cost.get("cache_read_input_tokens") or cost.get("cache_creation_input_tokens"):
        # the prompt cache's part, when the run used it (reads or writes)
        line += (
            f"; cache: read {_int(cost['cache_read_input_tokens'])} · written "
            f"{_int(cost.get('cache_creation_input_tokens'))} input tokens"
        )
        if cost.get("cache_hit_rate") is not None:
            line += f", hit rate {100 * cost['cache_hit_rate']:.1f}%"
        saved = cost.get("cache_saved_usd")
        if saved is not None:  # negative when the writes cost more than the reads saved
            line += f", saved {usd(saved)}" if saved >= 0 else f", cost {usd(-saved)} more"
    return line


def judges_line(cost: Mapping[str, Any]) -> str | None:
    """The judges' cost in words, beside the generation's: theirs, per scorer, and both
    together (what the spend cap counts); None without judges."""
    judges = cost.get("judges")
    if not judges:
        return None
    scorers = ", ".join(
        f"{s['scorer']} {usd(s['cost_usd'])} for {s['requests']:,}" for s in judges["scorers"]
    )
    both = [v for v in (cost["cost_usd"], judges["cost_usd"]) if v is not None]
    hits = judges.get("cache_hits") or 0
    cached = f", {hits:,} of them from the response cache" if hits else ""
    line = (
        f"est. {usd(judges['cost_usd'])} for {judges['requests']:,} requests of the model "
        f"scorers{cached} ({scorers}); with the generation {usd(sum(both) if both else None)}"
    )
    if judges["unpriced_models"]:
        line += f"; no price for {', '.join(judges['unpriced_models'])}"
    return line


def replaced_line(cost: Mapping[str, Any]) -> str | None:
    """What rows replaced since (``--rerun-changed``, ``--retry-errors``) had cost: spent, so
    the spend cap counts it, but in no row of results.parquet; None when none was."""
    replaced = cost.get(REPLACED)
    if not replaced:
        return None
    return (
        f"est. {usd(replaced)} for rows sent, then replaced by --rerun-changed or "
        f"--retry-errors; all told {usd(cost['total_usd'])}"
    )


def usd(value: float | None) -> str:
    """Dollars: cents, or four decimals below a cent."""
    if value is None:
        return NONE
    return f"${value:,.2f}" if value >= 0.01 or value == 0 else f"${value:.4f}"


def _state(state: str, line: str | None = None) -> str:
    if state == "partial":
        return "partial: read from checkpoints"
    return "no run.json" if state == "unknown" else line or state


def _span(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:,.1f} s"


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


def render_breakdown(by: Mapping[str, Any]) -> str:
    """The summary per value of an input column, one line each."""
    groups = by["groups"]
    names = [str(g["value"]) for g in groups] + [by["column"]]
    names += [f"  {v['variant']}" for g in groups for v in g.get("variants", ())]
    width = min(max(len(name) for name in names) + 2, 40)
    priced = any("cost_usd" in g for g in groups)
    lines = [
        f"by {by['column']} (joined on {by['joined_on']})",
        f"{by['column'][: width - 2]:<{width}}{'rows':>8}{'ok':>8}{'ok %':>8}"
        f"{'in tok':>11}{'out tok':>11}{'ttft p50':>10}{'e2e p50':>10}{'e2e p90':>10}"
        f"{'e2e p99':>10}" + (f"{'cost':>11}" if priced else ""),
    ]

    def line(name: str, g: Mapping[str, Any]) -> str:
        share = NONE if g["ok_share"] is None else f"{100 * g['ok_share']:.1f}"
        return (
            f"{_fit(name, width - 2):<{width}}{g['rows']:>8,}{g['ok']:>8,}{share:>8}"
            f"{_int(g['input_tokens']):>11}{_int(g['output_tokens']):>11}"
            + "".join(f"{_ms(g[k]):>10}" for k in ("ttft_s_p50", "e2e_s_p50", "e2e_s_p90"))
            + f"{_ms(g['e2e_s_p99']):>10}"
            + (f"{usd(g.get('cost_usd')):>11}" if priced else "")
        )

    for g in groups:
        lines.append(line(str(g["value"]), g))
        lines += [line(f"  {v['variant']}", v) for v in g.get("variants", ())]
    if by["groups_left_off"]:
        lines.append(f"… and {by['groups_left_off']:,} more values (see --json)")
    lines.append(
        "(latencies in ms"
        + (
            "; under each value, its rows per variant)"
            if by["groups"] and "variants" in by["groups"][0]
            else ")"
        )
    )
    return "\n".join(lines)


def variant_rows(variants: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[str]]]:
    """The figures of the variants side by side, a (label, one cell per variant) a line: the
    terminal and the page show the same lines. Cache lines only when some variant has any; TTFT
    to the first text only when it is not the TTFT."""
    vs = variants
    lines = [
        ("model", [", ".join(v["models"]) or NONE for v in vs]),
        ("rows", [f"{v['rows']:,}" for v in vs]),
        ("ok", [f"{v['ok']:,}" for v in vs]),
        ("error", [f"{v['error']:,}" for v in vs]),
        ("ok %", [NONE if v["ok_share"] is None else f"{100 * v['ok_share']:.1f}" for v in vs]),
    ]
    if any(v["cache_hits"] for v in vs):
        lines.append(("cache hits", [f"{v['cache_hits']:,}" for v in vs]))
    for key, label in _VARIANT_TOKENS:
        if key in ("input", "output") or any(v["tokens"][key] for v in vs):
            lines.append((label, [_int(v["tokens"][key]) for v in vs]))
    lines.append(("cost", [usd(v["cost_usd"]) for v in vs]))
    # TTFT to the first text differs from TTFT only after thinking or a tool call
    text_later = any(
        v["ttft_text_s"]["count"] and v["ttft_text_s"]["p50"] != v["ttft_s"]["p50"] for v in vs
    )
    for key, label in _VARIANT_TIMINGS:
        if key != "ttft_text_s" or text_later:
            show = _one if key == "stream_output_tokens_per_s" else _ms
            lines += [
                (f"{label} {p}", [show(v[key][p]) for v in vs]) for p in ("p50", "p90", "p99")
            ]
    return lines


_VARIANT_TOKENS = (
    ("input", "input tokens"),
    ("output", "output tokens"),
    ("cache_read", "cache read tokens"),
    ("cache_creation", "cache write tokens"),
)
_VARIANT_TIMINGS = (
    ("ttft_s", "ttft ms"),
    ("ttft_text_s", "ttft text ms"),
    ("e2e_s", "e2e ms"),
    ("stream_output_tokens_per_s", "out tok/s"),
)


def render_variants(variants: Sequence[Mapping[str, Any]] | None, width: int = 100) -> str:
    """The variants side by side, a column each (in blocks that fit ``width`` characters);
    nothing for a run of one variant."""
    if not variants or len(variants) < 2:
        return ""
    table = variant_rows(variants)
    label = max(len(name) for name, _ in table) + 2
    column = min(22, max(11, *(len(v["variant"]) + 2 for v in variants)))
    column = max(column, min(22, max(len(c) + 2 for c in table[0][1])))  # the models
    per_block = max(1, (width - label) // column)
    lines = ["variants side by side (latencies of the rows sent: response cache hits left out)"]
    for start in range(0, len(variants), per_block):
        block = slice(start, start + per_block)
        names = [_fit(v["variant"], column - 1) for v in variants[block]]
        lines += [] if start == 0 else [""]
        lines.append(f"{'variant':<{label}}" + "".join(f"{n:>{column}}" for n in names))
        for name, cells in table:
            lines.append(
                f"{name:<{label}}"
                + "".join(f"{_fit(c, column - 1):>{column}}" for c in cells[block])
            )
    return "\n".join(lines)


def _fit(text: str, length: int) -> str:
    return text if len(text) <= length else text[: length - 1] + "…"
