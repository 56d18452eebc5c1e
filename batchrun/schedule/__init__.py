"""Stage 2, schedule: the bounded worker pool and the rate budgets (``limits``) that pace it.
Knows nothing of HTTP."""
