"""Which shard owns a request: a stable hash of its (``variant``, ``id``), the same on every host,
in every process and every run (SHA-256, never Python's salted ``hash``), so shards started
apart never overlap and a shard resumed later finds its own rows. All samples of a row under a
variant go to one shard. Pure: no I/O but reading ``JOB_COMPLETION_INDEX`` when asked to.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from batchrun.errors import JobError
from batchrun.models import RequestItem

__all__ = ["INDEX_ENV", "Shard", "owned", "shard_of"]

INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by Kubernetes in each pod of an Indexed Job
_SPEC = re.compile(r"(\d+)/(\d+)")
_FOLDER = re.compile(r"shard-(\d+)-of-(\d+)")


def shard_of(variant: str, ident: str, count: int) -> int:
    """The shard (0 .. ``count``-1) of the requests of row ``ident`` under ``variant``."""
    digest = hashlib.sha256(f"{variant}\0{ident}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based, as Kubernetes numbers an Indexed Job's pods)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise JobError(
                f"--shard {self.index}/{self.count}: K must be 0 .. N-1 and N at least 1 "
                f"(e.g. --shard 0/{max(self.count, 2)})"
            )

    @property
    def folder(self) -> str:
        """The shard's run folder, inside ``output.dir``: ``shard-K-of-N``."""
        return f"shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, item: RequestItem) -> bool:
        return shard_of(item.variant, item.id, self.count) == self.index

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``K/N`` as ``--shard`` takes it."""
        found = _SPEC.fullmatch(text.strip())
        if found is None:
            raise JobError(f"--shard {text!r}: give K/N, shard K of N, K from 0, e.g. --shard 0/4")
        return cls(int(found[1]), int(found[2]))

    @classmethod
    def from_folder(cls, name: str) -> Shard | None:
        """The shard a folder named ``shard-K-of-N`` holds; None for any other name."""
        found = _FOLDER.fullmatch(name)
        if found is None:
            return None
        index, count = int(found[1]), int(found[2])
        return cls(index, count) if 0 <= index < count else None

    @classmethod
    def from_env(
        cls, count: int, env: Mapping[str, str] | None = None, *, whole: str | None = None
    ) -> Shard:
        """``--shards N`` without ``--shard``: K from ``JOB_COMPLETION_INDEX``, as a pod of a
        Kubernetes Indexed Job has it (or a cron line sets it). ``whole``: how the command at
        hand covers every shard, for the message (a run's ``--local``, by default)."""
        value = (os.environ if env is None else env).get(INDEX_ENV)
        if value is None or not value.strip():
            whole = whole or f"run all of them here with --shards {count} --local"
            raise JobError(
                f"--shards {count}: which shard is this? {INDEX_ENV} is not set; give "
                f"--shard K/{count}, set {INDEX_ENV}=K (0 .. {count - 1}), or {whole}"
            )
        if not value.strip().isdigit() or int(value) >= count:
            raise JobError(
                f"--shards {count}: {INDEX_ENV}={value!r} is not a shard of {count} (0 .. "
                f"{count - 1}); make the Job's completions equal to --shards"
            )
        return cls(int(value), count)


def owned(shard: Shard, batches: Iterator[list[RequestItem]]) -> Iterator[list[RequestItem]]:
    """The requests of ``batches`` that ``shard`` owns (batches left empty are dropped). The
    samples and variants of a row come together, so its hash is taken once a key."""
    last: tuple[str, str] | None = None
    mine = False
    for batch in batches:
        kept: list[RequestItem] = []
        for item in batch:
            key = (item.variant, item.id)
            if key != last:
                last, mine = key, shard_of(item.variant, item.id, shard.count) == shard.index
            if mine:
                kept.append(item)
        if kept:
            yield kept
