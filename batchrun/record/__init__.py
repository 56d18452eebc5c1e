"""Stage 4, record: the run folder, its lock, Parquet checkpoints and compaction, the manifest
and the cost line. Sends nothing."""
