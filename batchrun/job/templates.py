"""Prompt templates: ``{column}`` fields over input columns, ``{{`` and ``}}`` for braces.

Used by the job schema (to check templates when the job loads) and by the input stage (to
render them over columns). Pure: no I/O, no polars.
"""

from __future__ import annotations

import string

__all__ = ["TemplatePart", "columns_of", "parse_template"]

TemplatePart = tuple[str, str | None]  # (literal text, column whose value follows it, or None)


def parse_template(text: str) -> tuple[TemplatePart, ...]:
    """Split a ``{column}`` template into (literal, column) parts; ``{{`` and ``}}`` are braces.

    Fields are plain column names, taken literally (``{a.b}`` is the column ``a.b``); format
    specs and conversions are refused. Raises ``ValueError`` with a user-facing message.
    """
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(
            f"invalid template: {exc} (write {{{{ or }}}} for a literal brace)"
        ) from None
    parts: list[TemplatePart] = []
    for literal, field, spec, conversion in parsed:
        if field is not None and field.strip() == "":
            raise ValueError("invalid template: empty field {}; name a column, e.g. {question}")
        if spec or conversion:
            raise ValueError(
                f"invalid template: field {{{field}...}} has a format spec or conversion; "
                "fields are plain column names"
            )
        if parts and parts[-1][1] is None:  # "{{" ends a literal early: join it to the next
            literal = parts.pop()[0] + literal
        parts.append((literal, field))
    return tuple(parts)


def columns_of(parts: tuple[TemplatePart, ...]) -> list[str]:
    """The columns ``parts`` use, once each, in order of first use."""
    return list(dict.fromkeys(col for _, col in parts if col is not None))
