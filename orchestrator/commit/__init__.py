"""Stage 4, the exactly-once shard commit: a shard's rows in, Parquet files and a shard record out.

`layout` names every key of a job folder, `schemas` the Arrow schemas of its files, `shards` writes
a shard's files and its record with a conditional put, so a second attempt never overwrites.
"""
