"""Stage 1, load: the input files read lazily into request items, a conversation cell parsed,
and the plan of what a resumed run still has to send. Sends nothing."""
