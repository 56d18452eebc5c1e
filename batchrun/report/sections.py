"""The report's sections beyond the summary, listed once for the terminal, ``--json`` and the page.

A section is what a run shows when it applies: the variants side by side (a run of several
variants), the breakdown by an input column (``--by``), the scores (``scores.parquet``) with their
statistics. Each is a key of the summary's JSON,
a function computing its data (``None``: it does not apply, and the key is left out), and its
rendering as text and as a panel of the page ("" shows nothing). Adding a section is one entry
in :data:`SECTIONS`; the command, the terminal and the page take it from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from batchrun.report.by import breakdown
from batchrun.report.load import RunData
from batchrun.report.page import breakdown_panel, panel, variants_table
from batchrun.report.scores import render_scores_html, render_scores_text, score_section
from batchrun.report.text import render_breakdown, render_variants
from batchrun.report.variants import per_variant

__all__ = ["SECTIONS", "Options", "Section", "add_sections", "html_sections", "text_sections"]


@dataclass(frozen=True)
class Options:
    """What the command was asked for, beyond the run folder."""

    by: str | None = None  # --by COLUMN


@dataclass(frozen=True)
class Section:
    """One section: its key in the JSON, its data, its text and its panel."""

    key: str
    compute: Callable[[RunData, Options], Any]  # None: the section does not apply
    text: Callable[[Any], str]
    html: Callable[[Any], str]


def _by(run: RunData, options: Options) -> dict[str, Any] | None:
    return None if options.by is None else breakdown(run, options.by)


def _scores_panel(scores: Mapping[str, Any]) -> str:
    title = "Scores: mean with 95% interval, and variants compared"
    return panel(title, render_scores_html(scores), wide=True)


SECTIONS: tuple[Section, ...] = (
    Section("variants", lambda run, _: per_variant(run), render_variants, variants_table),
    Section("by", _by, render_breakdown, breakdown_panel),
    Section(
        "scores",
        lambda run, options: score_section(run, options.by),
        render_scores_text,
        _scores_panel,
    ),
)


def add_sections(summary: dict[str, Any], run: RunData, options: Options) -> dict[str, Any]:
    """``summary`` with the data of every section that applies, under its key."""
    for section in SECTIONS:
        data = section.compute(run, options)
        if data is not None:
            summary[section.key] = data
    return summary


def text_sections(summary: Mapping[str, Any]) -> list[str]:
    """The text of the sections in ``summary``, in the order of :data:`SECTIONS`."""
    texts = (s.text(summary[s.key]) for s in SECTIONS if summary.get(s.key) is not None)
    return [text for text in texts if text]


def html_sections(summary: Mapping[str, Any]) -> list[str]:
    """The panels of the sections in ``summary``, in the order of :data:`SECTIONS`."""
    panels = (s.html(summary[s.key]) for s in SECTIONS if summary.get(s.key) is not None)
    return [panel for panel in panels if panel]
