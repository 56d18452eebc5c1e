"""Loading the job file: YAML with line marks, ``--set`` overrides, messages that say the fix.

Generic over the schema (a pydantic model class, defined in :mod:`batchrun.job`): reads one
YAML document, applies ``KEY=VALUE`` overrides, validates, and places every problem at its
line: ``FILE:LINE:COL: dotted.key: what is wrong; how to fix it`` (``--set ITEM: ...`` for an
override), all in one :class:`~batchrun.errors.JobError`; :mod:`batchrun.job.messages` words
them. The only YAML reader. It must not read the input data, touch the network or read the API
key.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from batchrun.errors import JobError
from batchrun.job.messages import Describer, Loc, dotted, redact
from batchrun.job.suggest import STREAM_HINT, extra_hint, suggest

__all__ = ["load_model"]

M = TypeVar("M", bound=BaseModel)


# --- reading ---------------------------------------------------------------------------------


def _syntax_error(shown: str, exc: yaml.MarkedYAMLError) -> JobError:
    """A YAML syntax error at its line and column, with the likely fix."""
    problem, context = exc.problem or "", exc.context or ""
    mark, opened = exc.problem_mark, exc.context_mark
    where = f"line {opened.line + 1}, column {opened.column + 1}" if opened else "above"
    if "\\t" in problem:
        hint = "YAML indents with spaces, never tabs: replace the tab with spaces"
    elif "quoted scalar" in context:
        hint, mark = f"the quote opened at {where} is never closed", opened or mark
    elif problem.startswith("expected ',' or"):
        bracket = "[" if "]" in problem else "{"
        hint, mark = f"the '{bracket}' opened at {where} is never closed", opened or mark
    elif "mapping values are not allowed" in problem:
        hint = (
            "check this line's indentation; a value containing ': ' must be in quotes, "
            'e.g. prompt: "Q: {question}"'
        )
    elif "undefined alias" in problem:
        hint = "YAML reads a value starting with '*' as an alias: put the value in quotes"
    elif "cannot start any token" in problem:
        hint = "a value starting with this character must be in quotes"
    elif "constructor for the tag" in problem:
        hint = "tags (!!type, !name) are not allowed in a job file: write plain values"
    elif "unhashable key" in problem:
        hint = "a key must be plain text"
    else:
        hint = (
            "check the indentation (the keys of one section line up, indented with spaces) "
            "and put values containing ': ' or ' #' in quotes"
        )
    at = f"{shown}:{mark.line + 1}:{mark.column + 1}" if mark else shown
    return JobError(f"{at}: YAML syntax error: {problem or context}; {hint}")


class _Marks:
    """Where each dotted path of a YAML document starts: its key and its value."""

    def __init__(self, root: yaml.Node) -> None:
        self.keys: dict[Loc, yaml.Mark] = {(): root.start_mark}
        self.values: dict[Loc, yaml.Mark] = {(): root.start_mark}
        self.sections: set[Loc] = set()  # paths whose value is a mapping: errors point at the key
        self.problems: list[tuple[int, int, str]] = []
        self._walk(root, ())

    def _walk(self, node: yaml.Node, loc: Loc) -> None:
        if isinstance(node, yaml.MappingNode):
            self.sections.add(loc)
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                sub = (*loc, key)
                if sub in self.keys and key != "<<":
                    first, mark = self.keys[sub].line + 1, key_node.start_mark
                    message = f"{dotted(sub)}: duplicate key (first on line {first}); keep one"
                    self.problems.append((mark.line, mark.column, message))
                    continue
                self.keys[sub], self.values[sub] = key_node.start_mark, value_node.start_mark
                self._walk(value_node, sub)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.keys[(*loc, i)] = self.values[(*loc, i)] = item.start_mark
                self._walk(item, (*loc, i))

    def find(self, loc: Loc, *, at_key: bool) -> yaml.Mark:
        if loc in self.values:
            return self.keys[loc] if at_key or loc in self.sections else self.values[loc]
        while loc not in self.keys:  # a missing key: point at the section that lacks it
            loc = loc[:-1]
        return self.keys[loc]


def _read(path: Path, shown: str) -> tuple[dict[str, Any], _Marks]:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise JobError(f"{shown}: no such job file") from None
    except IsADirectoryError:
        raise JobError(f"{shown}: is a folder, not a job file") from None
    except OSError as exc:
        raise JobError(f"{shown}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise JobError(f"{shown}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(shown, exc) from None
    except yaml.YAMLError as exc:
        raise JobError(f"{shown}: YAML error: {exc}") from None
    finally:
        loader.dispose()
    if node is None:
        raise JobError(f"{shown}: the job file is empty")
    if not isinstance(data, dict):
        raise JobError(f"{shown}:1:1: the job file must be a mapping of keys (name, input, ...)")
    return data, _Marks(node)


# --- overrides -------------------------------------------------------------------------------


def _override_hint(root: type[BaseModel], section: Loc, key: str) -> str:
    """What an unknown key of ``--set`` was meant to be, as the end of its message."""
    found = suggest(root, section, key)
    if found is None:
        return ""
    if found.stream:
        return f"; {STREAM_HINT}"
    if found.extra:
        return f"; {extra_hint(key, override=True)}"
    return "; did you mean " + " or ".join(repr(dotted(k)) for k in found.keys) + "?"


def _parse_override(root: type[BaseModel], item: str) -> tuple[Loc, object]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ValueError("expected KEY=VALUE, e.g. limits.concurrency=64")
    loc: Loc = tuple(key.strip().split("."))
    model: type[BaseModel] = root
    target: Any = None
    for i, part in enumerate(loc):
        if part not in model.model_fields:
            hint = _override_hint(root, loc[:i], str(part))
            raise ValueError(f"unknown key {dotted(loc[: i + 1])!r}{hint}")
        target = model.model_fields[str(part)].annotation
        if i < len(loc) - 1:
            sub = target
            if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
                raise ValueError(f"{dotted(loc[: i + 1])} is a value, not a section")
            model = sub
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        if target not in (str, str | None):
            raise ValueError(
                f"the value is not valid YAML: {getattr(exc, 'problem', exc)}"
            ) from None
        value = raw
    # A text key keeps the text as written: `input.prompt={q}` is not a mapping, `name=2024` no int.
    if target in (str, str | None) and value is not None and not isinstance(value, str):
        value = raw
    return loc, value


def _apply(data: dict[str, Any], loc: Loc, value: object) -> None:
    node = data
    for part in loc[:-1]:
        child = node.get(str(part))
        if child is None:
            child = node[str(part)] = {}
        if not isinstance(child, dict):
            raise ValueError(f"{dotted(loc[:-1])} in the job file is not a mapping")
        node = child
    node[str(loc[-1])] = value


def _untagged(loc: Loc, data: object) -> Loc:
    """``loc`` without the tag a union discriminated by a key puts after a list index
    (``scorers[0].exact.target`` is ``scorers[0].target``): a name that is one of the list
    item's values in the file."""
    kept: Loc = ()
    node = data
    for part in loc:
        item = node if kept and isinstance(kept[-1], int) and isinstance(node, dict) else {}
        if not (isinstance(part, str) and part in item.values()):
            kept = (*kept, part)
            node = _child(node, part)
    return kept


def _child(node: object, part: str | int) -> object:
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def _report(
    exc: ValidationError,
    data: object,
    shown: str,
    marks: _Marks,
    applied: dict[Loc, str],
    describer: Describer,
) -> list[tuple[int, int, str]]:
    placed: list[tuple[int, int, str]] = []
    for err in exc.errors(include_url=False):
        loc = _untagged(tuple(err["loc"]), data)
        line = f"{dotted(loc) or '(top level)'}: {describer.describe(err)}"
        by = [item for o, item in applied.items() if loc[: len(o)] == o]
        if by:
            placed.append((-1, 0, f"--set {redact(by[-1], describer.secret_keys)}: {line}"))
        else:
            mark = marks.find(loc, at_key=err["type"] in ("extra_forbidden", "missing"))
            placed.append(
                (mark.line, mark.column, f"{shown}:{mark.line + 1}:{mark.column + 1}: {line}")
            )
    return placed


def load_model(
    path: str | Path,
    root: type[M],
    overrides: Sequence[str] = (),
    *,
    secret_keys: Collection[str] = (),
) -> M:
    """Read the YAML file at ``path``, apply ``overrides`` and validate it as ``root``.

    Every problem found is one line of a single JobError, in file order, overrides first.
    Values of ``secret_keys`` (dotted paths), and any value that looks like a key, are never
    repeated in a message.
    """
    shown = str(path)
    data, marks = _read(Path(path), shown)
    found: list[tuple[int, int, str]] = [
        (line, col, f"{shown}:{line + 1}:{col + 1}: {msg}") for line, col, msg in marks.problems
    ]
    applied: dict[Loc, str] = {}
    for item in overrides:
        try:
            loc, value = _parse_override(root, item)
            _apply(data, loc, value)
        except ValueError as exc:
            found.append((-1, 0, f"--set {redact(item, secret_keys)}: {exc}"))
        else:
            applied[loc] = item
    model: M | None = None
    try:
        model = root.model_validate(data)
    except ValidationError as exc:
        found += _report(exc, data, shown, marks, applied, Describer(root, secret_keys))
    if found or model is None:
        found.sort(key=lambda p: (p[0], p[1]))
        raise JobError("\n".join(msg for *_, msg in found))
    return model
