"""Past one process: shards of a job (``--shard K/N``), run as processes on one host
(``--shards N --local``) or by a scheduler on many (a Kubernetes Indexed Job, cron), and merged
back into one run folder (``batchrun merge``).

``assign`` decides which shard owns a request (pure); ``plan`` counts a shard's work; ``folders``
finds a job's shard folders; ``merge`` combines them; ``local`` supervises the processes of
``--local``. A shard is an ordinary run of its own folder: nothing in the pipeline knows about
shards but the item stream (``load.inputs.iter_batches``) and the run folder (``Job.run_dir``).
"""

from batchrun.shard.assign import Shard, shard_of

__all__ = ["Shard", "shard_of"]
