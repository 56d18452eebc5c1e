"""Stage 4, record: checking the run folder's Parquet files before their rows are trusted.

A checkpoint part carries the CRC-32 of its bytes in its name (``results-000007.1a2b3c4d.parquet``:
polars writes no Parquet page checksums, and the name is committed with the file by the same
rename). A part that does not match, or (written before parts had checksums) does not decode,
is moved to ``parts/quarantine/`` with a warning, so its rows count as not done and are sent
again. A damaged final file (``results.parquet``, ``attempts.parquet``) is not moved: the run
is refused (exit 2), since resuming without it would send every request it holds again. This
module reads and moves files; it writes none.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import polars as pl
import structlog

from batchrun.errors import JobError
from batchrun.record.files import file_crc32

__all__ = ["QUARANTINE", "check_final", "part_name", "part_seq", "readable_part"]

log = structlog.get_logger()

QUARANTINE = "quarantine"  # under parts/
_PART = re.compile(
    r"(?P<table>[a-z]+)-(?P<seq>\d+)(?P<merged>\.merged)?(?:\.(?P<crc>[0-9a-f]{8}))?\.parquet"
)
_MAGIC = b"PAR1"


def part_name(table: str, seq: int, crc: int, *, merged: bool = False) -> str:
    """The file name of a checkpoint part: its table, number and checksum."""
    return f"{table}-{seq:06d}{'.merged' if merged else ''}.{crc:08x}.parquet"


def part_seq(path: Path) -> int:
    """A part's number (later parts win over earlier ones); 0 for a name not a part's."""
    match = _PART.fullmatch(path.name)
    return int(match["seq"]) if match else 0


def readable_part(path: Path, *, quarantine: bool) -> bool:
    """Whether a part's rows can be trusted. A part that cannot is reported, and moved to
    ``parts/quarantine/`` when ``quarantine`` (only under the run folder's lock: a report
    reading a folder must not move what a run is using)."""
    problem = _part_problem(path)
    if problem is None:
        return True
    if not quarantine:
        log.warning("batchrun.results.unreadable_part", path=str(path), problem=problem)
        return False
    folder = path.parent / QUARANTINE
    folder.mkdir(mode=0o700, exist_ok=True)
    target = folder / path.name
    while target.exists():  # never replace an earlier quarantined file
        target = target.with_name(f"{target.stem}.again{target.suffix}")
    os.replace(path, target)
    log.warning(
        "batchrun.results.part_quarantined",
        path=str(path),
        problem=problem,
        moved_to=str(target),
        note="its rows are not counted as done and will be sent again",
    )
    return False


def _part_problem(path: Path) -> str | None:
    match = _PART.fullmatch(path.name)
    if match is not None and match["crc"] is not None:
        try:
            actual = file_crc32(path)
        except OSError as exc:
            return f"it cannot be read: {exc.strerror}"
        if actual != int(match["crc"], 16):
            return f"its bytes have checksum {actual:08x}, not {match['crc']} as written"
        return None
    return _footer_problem(path) or _data_problem(path)  # a part written without a checksum


def check_final(path: Path, *, decode: bool = True) -> None:
    """Refuse a damaged final file: a JobError naming it, what is wrong and the two ways on.
    ``decode``: read every value too (at the start of a run), not only the footer."""
    if not path.exists():
        return
    problem = _footer_problem(path) or (_data_problem(path) if decode else None)
    if problem is not None:
        raise JobError(
            f"{path} is damaged: {problem}. batchrun will not resume from it, because without "
            "it every request it holds would be sent again. Either restore the file (from a "
            "backup or a copy) and run again, or run with --fresh to start over: that deletes "
            "it and sends every request again."
        )


def _footer_problem(path: Path) -> str | None:
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            if size >= 12:
                fh.seek(size - 4)
            tail = fh.read(4)
    except OSError as exc:
        return f"it cannot be read: {exc.strerror}"
    if size < 12 or tail != _MAGIC:
        return (
            f"it is truncated or not a Parquet file ({size} bytes, and no Parquet footer at "
            "its end)"
        )
    try:
        pl.read_parquet_schema(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        return f"its footer does not parse ({_first_line(exc)})"
    return None


def _data_problem(path: Path) -> str | None:
    """Decode every value, a row group at a time (bounded memory)."""
    try:
        for _ in pl.scan_parquet(path).collect_batches():
            pass
    except (pl.exceptions.PolarsError, OSError) as exc:
        return f"its data does not decode ({_first_line(exc)})"
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
