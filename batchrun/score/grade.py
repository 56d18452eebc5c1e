"""Reading a judge's grade from its reply. Pure: text in, a score (or why not) out.

A reply often restates the instructions before its verdict ("... reply GRADE: C or GRADE: I.
GRADE: C"), so the grade is the *last* match of the pattern. With ``values`` the matched text
is looked up (exactly, then ignoring case); with ``range`` it is read as a number and scaled to
0..1; with neither, the number is the score as it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Grade", "extract_grade"]


@dataclass(frozen=True)
class Grade:
    """A judge reply's grade: ``score`` (None when it could not be read, with ``error``
    saying why) and ``answer``, the text the pattern matched."""

    score: float | None
    answer: str | None
    error: str | None = None


def extract_grade(
    reply: str,
    pattern: str,
    *,
    values: Mapping[str, float] | None = None,
    scale: tuple[float, float] | None = None,
) -> Grade:
    """The grade ``pattern``'s group finds last in ``reply``."""
    matches = list(re.finditer(pattern, reply))
    if not matches:
        return Grade(None, None, f"no grade in the judge's reply (grade_pattern {pattern!r})")
    answer = matches[-1].group(1)
    if answer is None:
        return Grade(None, None, "the grade_pattern's group matched nothing")
    answer = answer.strip()
    if values is not None:
        if answer in values:
            return Grade(float(values[answer]), answer)
        folded = {k.casefold(): v for k, v in values.items()}
        if answer.casefold() in folded:
            return Grade(float(folded[answer.casefold()]), answer)
        known = ", ".join(values)
        return Grade(None, answer, f"grade {answer!r} is not one of the values ({known})")
    try:
        number = float(answer)
    except ValueError:
        return Grade(None, answer, f"grade {answer!r} is not a number")
    if scale is None:
        return Grade(number, answer)
    low, high = scale
    if not low <= number <= high:
        return Grade(None, answer, f"grade {answer} is outside range [{low:g}, {high:g}]")
    return Grade((number - low) / (high - low), answer)
