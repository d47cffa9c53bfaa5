"""Stage 2, the plan: a `JobSpec` in, a `Plan` out: shards of fixed row ranges, each row's id and seed.

The same spec gives the same plan on any machine; prompt files are scanned, never held in memory.
"""
