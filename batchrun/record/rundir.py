"""Stage 4, record: the run folder itself: its run id, creating it private to its owner, and
clearing it for ``--fresh`` (the shard folders of an earlier sharded run in it too). It reads no
input and writes no rows (``record.parquet`` does).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
from datetime import datetime
from pathlib import Path

from batchrun.errors import JobError
from batchrun.record.files import check_private, write_temp
from batchrun.record.lock import RunLock
from batchrun.shard.folders import shard_folders

__all__ = ["clear", "make_run_dir", "new_run_id"]

_EARLIER = (
    "results.parquet",
    "attempts.parquet",
    "run.json",
    "report.html",
    "traces.jsonl",
    "metrics.jsonl",
    "scores.parquet",
    "judgements.parquet",
)


def new_run_id(now: datetime) -> str:
    """A run's id: its UTC start, sortable, and a random suffix for runs in the same second."""
    return f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def make_run_dir(run_dir: Path) -> Path:
    """The run folder, created private to its owner and checked to be writable; one another
    user owns, or anyone may write to without the sticky bit, is refused (a JobError)."""
    run_dir = run_dir.resolve()
    try:
        run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        check_private(run_dir)
        check_private(run_dir / "parts", what="run folder's parts/ folder")
        write_temp(run_dir, "write-test", lambda fh: None).unlink()
    except OSError as exc:
        raise JobError(
            f"output.dir: cannot write the run folder {run_dir}: {exc.strerror}; "
            "choose a folder you can write with --set output.dir=..."
        ) from exc
    return run_dir


def clear(run_dir: Path) -> None:
    """--fresh: remove what an earlier run wrote (only batchrun's own files), telemetry
    included, and the ``shard-K-of-N`` folders of an earlier sharded run, so that nothing in
    the folder describes an earlier run (a later ``merge`` or ``report`` would read stale
    shards). The caller holds ``run_dir``'s lock; each shard folder's is taken too, all before
    anything is removed: a shard still running refuses the clearing (RunLockedError, exit 75)."""
    shards = list(shard_folders(run_dir).values())
    with contextlib.ExitStack() as held:
        for folder in shards:
            if not folder.is_symlink():
                held.enter_context(RunLock(folder))
        for folder in shards:
            if folder.is_symlink():
                folder.unlink()  # a link someone made, not batchrun's folder: only the link goes
            else:
                shutil.rmtree(folder)
    for name in _EARLIER:
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "parts", ignore_errors=True)
    shutil.rmtree(run_dir / "judge", ignore_errors=True)  # the judges' own run folders
