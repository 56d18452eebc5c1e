"""Batch mode's memory in the run folder: which batches exist, and what each one holds.

Under ``RUN_DIR/batch/``:

- ``state.json``: the salt of this folder's custom ids and one record per batch, in order
  (format below), rewritten atomically (temporary file, fsync, rename) after every change;
- ``requests-NNNNNN.jsonl``: the requests of record NNNNNN exactly as the batch body carries
  them (``{"custom_id", "params"}``), one a line, to send them again after a crash or a retry;
- ``index-NNNNNN.jsonl``: the mapping of those custom ids to rows, one JSON object a line
  (custom_id, id, sample, request_hash, attempt, first_at). Both are written atomically before
  the record that names them;
- ``cancel-requested``: present while a ``--cancel`` asks the process running the folder to
  cancel its batches.

A record's ``status`` moves ``intent`` (its entries are on disk and it may have been sent; its
batch id is unknown) → ``open`` (the API took it: ``id`` is set) → ``collected`` (its results
are in the Parquet files, and its retries are records of their own); ``rejected`` is an intent
the API refused (no batch exists). This module only reads and writes these files.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

from batchrun.batch.entries import Entry
from batchrun.errors import JobError
from batchrun.record.files import commit, write_temp
from batchrun.record.parquet import write_json_atomic

__all__ = [
    "BatchRecord",
    "BatchState",
    "Status",
    "cancel_requested",
    "clear_batch_state",
    "clear_cancel",
    "iter_entries",
    "iter_wires",
    "load_state",
    "request_cancel",
    "save_state",
    "write_batch_files",
]

Status = Literal["intent", "open", "collected", "rejected"]
FOLDER = "batch"
_VERSION = 1


@dataclass
class BatchRecord:
    """One batch, from the intent to send it until its results are collected."""

    seq: int
    count: int
    bytes: int
    intent_at: str  # UTC, ISO 8601: written before the batch was first sent
    status: Status = "intent"
    id: str | None = None
    request_id: str | None = None  # of the response that created it
    processing_status: str | None = None
    request_counts: dict[str, int] = field(default_factory=dict)
    created_at: str | None = None
    ended_at: str | None = None
    sent_at: str | None = None  # written before each attempt to create the batch
    # Reconciling an intent after a crash: batches listed since it that may be it.
    listed: bool = False
    candidates: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def requests_file(self) -> str:
        return f"requests-{self.seq:06d}.jsonl"

    @property
    def index_file(self) -> str:
        return f"index-{self.seq:06d}.jsonl"


@dataclass
class BatchState:
    """Every batch record of a run folder, and the salt of its custom ids."""

    salt: str = field(default_factory=lambda: secrets.token_hex(8))
    records: list[BatchRecord] = field(default_factory=list)

    def unfinished(self) -> list[BatchRecord]:
        """Records whose batch may still be running or was never confirmed: intent and open."""
        return [r for r in self.records if r.status in ("intent", "open")]

    def known_ids(self) -> set[str]:
        return {r.id for r in self.records if r.id is not None}

    def next_seq(self) -> int:
        return 1 + max((r.seq for r in self.records), default=0)


def _folder(run_dir: Path) -> Path:
    return run_dir / FOLDER


def load_state(run_dir: Path) -> BatchState:
    """The folder's state; a fresh one (new salt, no records) when there is none yet."""
    path = _folder(run_dir) / "state.json"
    if not path.exists():
        return BatchState()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("version") != _VERSION:
            raise ValueError(f"version {data.get('version')!r}, expected {_VERSION}")
        return BatchState(
            salt=str(data["salt"]),
            records=[BatchRecord(**record) for record in data["records"]],
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise JobError(
            f"{path}: unreadable batch state ({exc}); it records batches that may still be "
            "running on the API, so it is never overwritten: fix or move it, or start over "
            "with another output.dir"
        ) from exc


def save_state(run_dir: Path, state: BatchState) -> None:
    folder = _folder(run_dir)
    folder.mkdir(exist_ok=True)
    payload: dict[str, Any] = {
        "version": _VERSION,
        "salt": state.salt,
        "records": [asdict(record) for record in state.records],
    }
    write_json_atomic(folder / "state.json", payload)


def _write_atomic(path: Path, lines: Iterable[bytes]) -> None:
    def write(fh: BinaryIO) -> None:
        for line in lines:
            fh.write(line)
            fh.write(b"\n")

    commit(write_temp(path.parent, path.name, write), path)  # a planted link is not followed


def write_batch_files(
    run_dir: Path, record: BatchRecord, entries: Sequence[Entry], wires: Sequence[bytes]
) -> None:
    """Write a record's requests and index (before the state names the record)."""
    folder = _folder(run_dir)
    folder.mkdir(exist_ok=True)
    _write_atomic(folder / record.requests_file, wires)
    _write_atomic(
        folder / record.index_file,
        (json.dumps(e.to_json(), separators=(",", ":")).encode() for e in entries),
    )


def iter_entries(run_dir: Path, record: BatchRecord) -> Iterator[Entry]:
    """A record's index, in order."""
    path = _folder(run_dir) / record.index_file
    try:
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                yield Entry.from_json(json.loads(line))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise JobError(f"{path}: unreadable batch index ({exc})") from exc


def iter_wires(run_dir: Path, record: BatchRecord) -> Iterator[bytes]:
    """A record's requests as the batch body carries them, in order."""
    path = _folder(run_dir) / record.requests_file
    try:
        with open(path, "rb") as fh:
            for line in fh:
                yield line.rstrip(b"\n")
    except OSError as exc:
        raise JobError(f"{path}: unreadable batch requests ({exc})") from exc


def request_cancel(run_dir: Path) -> None:
    folder = _folder(run_dir)
    folder.mkdir(exist_ok=True)
    (folder / "cancel-requested").touch()


def cancel_requested(run_dir: Path) -> bool:
    return (_folder(run_dir) / "cancel-requested").exists()


def clear_cancel(run_dir: Path) -> None:
    (_folder(run_dir) / "cancel-requested").unlink(missing_ok=True)


def clear_batch_state(run_dir: Path) -> None:
    """--fresh: forget every batch (the caller checks that none is still running)."""
    shutil.rmtree(_folder(run_dir), ignore_errors=True)
