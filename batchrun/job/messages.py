"""Messages for job-file problems: what is wrong, where, and how to fix it; never a secret.

Turns pydantic's validation errors into user-facing words (the nearest valid key, the section a
misplaced key belongs in, "write the value without quotes", "put the template in quotes") and
decides which values may be repeated back. Pure: no files, no YAML documents.
"""

from __future__ import annotations

import difflib
import math
import re
import types
from collections.abc import Collection
from datetime import date
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from batchrun.job.suggest import STREAM_HINT, extra_hint, section_keys, suggest

__all__ = ["Describer", "Loc", "dotted", "looks_like_key", "model_in", "redact"]

Loc = tuple[str | int, ...]

_KEY_PREFIX = re.compile(r"sk-ant-|^sk[-_]|^x-api-key", re.IGNORECASE)
_TOKEN = re.compile(r"[A-Za-z0-9_\-+/=.]{32,}")
_CREDENTIALS = re.compile(r"://[^/\s]*@")  # user:password@ in a URL


def looks_like_key(text: str) -> bool:
    """Whether ``text`` looks like an API key or token rather than a name."""
    text = text.strip()
    if _KEY_PREFIX.search(text):
        return True
    # A long run of mixed letters and digits with no separator a name would use.
    return bool(
        _TOKEN.fullmatch(text)
        and re.search(r"[a-z]", text)
        and re.search(r"\d", text)
        and "_" not in text
    )


def dotted(loc: Loc) -> str:
    """``("sim", "faults", 0, "kind")`` as ``sim.faults[0].kind``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The model class inside an annotation such as ``Fault``, ``list[Fault]``, ``X | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (list, tuple, Union, types.UnionType):
        for arg in get_args(annotation):
            if (found := model_in(arg)) is not None:
                return found
    return None


def _model_at(root: type[BaseModel], loc: Loc) -> type[BaseModel] | None:
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model is not None else None
        model = model_in(field.annotation) if field is not None else None
    return model


# --- one validation error in words -----------------------------------------------------------


class Describer:
    """Turns one pydantic error into words: what is wrong and, where known, the fix."""

    def __init__(self, root: type[BaseModel], secret_keys: Collection[str]) -> None:
        self.root = root
        self.secret_keys = secret_keys

    def unknown_key(self, section: Loc, key: str) -> str:
        found = suggest(self.root, section, key)
        if found is None:
            valid = section_keys(self.root, section)
            return "unknown key; valid keys here: " + ", ".join(valid) if valid else "unknown key"
        if found.stream:
            return f"unknown key; {STREAM_HINT}"
        if found.extra:
            return f"unknown key; {extra_hint(key)}"
        if found.exact:  # the right key in the wrong section: `concurrency` at the top level
            home = found.keys[0]
            place = f"the {dotted(home[:-1])} section" if len(home) > 1 else "the top level"
            return f"unknown key here; it belongs in {place} ({dotted(home)})"
        names = [str(k[-1]) if k[:-1] == section else dotted(k) for k in found.keys]
        return "unknown key; did you mean " + " or ".join(map(repr, names)) + "?"

    def shown(self, loc: Loc, value: object) -> str | None:
        if dotted(loc) in self.secret_keys:
            return None
        if value is None or isinstance(value, bool):
            return {None: "null", True: "true", False: "false"}[value]
        if isinstance(value, int | float):
            return str(value)
        if isinstance(value, str | date):
            text = value if isinstance(value, str) else value.isoformat()
            if _CREDENTIALS.search(text) or looks_like_key(text):
                return None
            text = repr(text)
            return text if len(text) <= 60 else text[:57] + "..."
        return None

    def describe(self, err: ErrorDetails) -> str:
        loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
        if kind == "missing":
            field = self._field(loc)
            hint = f" ({field.description})" if field and field.description else ""
            return f"required key is missing{hint}"
        if kind == "extra_forbidden":
            return self.unknown_key(loc[:-1], str(loc[-1]))
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        hint = self._hint(kind, value)
        if kind in ("model_type", "model_attributes_type", "dict_type"):
            shown = self.shown(loc, value)
            return "must be a section, its keys indented on the lines below it" + (
                f", not {shown}" if shown is not None else ""
            )
        elif kind in ("tuple_type", "list_type"):
            msg = "must be a list, e.g. [a, b]"
        if kind == "literal_error" and isinstance(value, str):
            options = re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", "")))
            close = difflib.get_close_matches(value, options, n=1)
            if close:
                return f"{msg} (got {value!r}; did you mean {close[0]!r}?)"
        shown = self.shown(loc, value)
        got = f" (got {shown})" if shown is not None and "(got" not in msg else ""
        return f"{msg}{got}{hint}"

    def _field(self, loc: Loc) -> Any:
        model = _model_at(self.root, loc[:-1])
        return model.model_fields.get(str(loc[-1])) if model is not None else None

    @staticmethod
    def _hint(kind: str, value: object) -> str:
        if value is None and kind.endswith("_type"):
            return "; the key has no value: give one, or remove the key to use the default"
        if isinstance(value, str) and _reads_as(kind, value.strip()):
            return "; write the value without quotes"
        if kind == "string_type" and isinstance(value, dict | list):
            what = "mapping" if isinstance(value, dict) else "list"
            opener = "{" if what == "mapping" else "["
            return (
                f"; YAML reads an unquoted value starting with '{opener}' as a {what}: "
                'put the value in quotes, e.g. prompt: "{question}"'
            )
        return ""


def _reads_as(kind: str, text: str) -> bool:
    """Whether ``text``, unquoted, is what ``kind`` asks for: ``"16"`` is an int in quotes."""
    if kind == "bool_type":
        return text.lower() in ("true", "false")
    if kind == "int_type":
        return text.lstrip("+-").isdigit()
    if kind == "float_type":
        try:
            return math.isfinite(float(text))
        except ValueError:
            return False
    return False


def redact(item: str, secret_keys: Collection[str]) -> str:
    key, _, value = item.partition("=")
    if key.strip() in secret_keys or looks_like_key(value) or _CREDENTIALS.search(value):
        return f"{key.strip()}=***"
    return item
