"""Keys seen twice, found through their 64-bit hashes without holding the keys.

The input check (duplicate ids), the compaction (rows a later row replaces) and the resume plan
(rows sharing a hash) each hash a million keys to 8 bytes apiece and ask which hashes occur more
than once; only those keys are then read again and compared exactly. Pure polars, no I/O.
"""

from __future__ import annotations

import polars as pl

__all__ = ["seen_twice"]


def seen_twice(ordered: pl.Series) -> pl.Series:
    """The values that occur more than once in ``ordered`` (sorted), each once.

    Every value is compared with the next through zero-copy slices: 8 bytes a value, where
    grouping the values, or the keys they hash, takes several times that.
    """
    later = ordered.slice(1)
    return later.filter(later == ordered.slice(0, later.len())).unique()
