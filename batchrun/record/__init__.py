"""Stage 4, record: the columns (``schema``), Parquet checkpoints and compaction (``parquet``),
the run folder and its lock, the manifest and the cost line. Sends nothing."""
