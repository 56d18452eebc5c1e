"""Files a job's request names: a JSON schema (``request.output_format``) or a tool list
(``request.tools``) given as a path, read when the job is loaded.

Part of the job file's stage: reads only the files the job names, relative to its folder, and
words what goes wrong as a :class:`~batchrun.errors.JobError` naming the key and the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from batchrun.errors import JobError

if TYPE_CHECKING:
    from batchrun.job.request import RequestConfig

__all__ = ["read_request_files"]

_WANTED = {"output_format": (dict, "a JSON schema (an object)"), "tools": (list, "a list of tools")}


def read_request_files(request: RequestConfig, base_dir: Path, *, shown: str) -> dict[str, Any]:
    """The contents of the request keys given as paths, by key; ``shown`` names the job file."""
    read: dict[str, Any] = {}
    for key, name in request.files().items():
        path = base_dir / Path(name).expanduser()
        where = f"{shown}: request.{key}"
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise JobError(
                f"{where}: no such file: {name} (relative paths start at the job file's "
                f"folder, {base_dir})"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise JobError(f"{where}: cannot read {name}: {exc}") from None
        try:
            value = yaml.safe_load(text) if path.suffix.lower() != ".json" else json.loads(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise JobError(
                f"{where}: {name} is not valid {path.suffix[1:].upper()}: {exc}"
            ) from None
        kind, what = _WANTED[key]
        if not isinstance(value, kind):
            raise JobError(f"{where}: {name} must hold {what}, not {type(value).__name__}")
        read[key] = value
    return read
