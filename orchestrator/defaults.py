"""Every default in one place, named, so a reader can find and a test can reference it."""

ROWS_PER_SHARD = 256
MAX_ATTEMPTS = 3
SHARDS_IN_FLIGHT = 3  # per worker: the engine's batch never drains between shards
RETRY_BACKOFF_S = 0.5
RETRY_BACKOFF_MAX_S = 10.0
GPU_MEMORY_UTILIZATION = 0.9
CPU_GPU_MEMORY_UTILIZATION = 0.1  # on the CPU backend this is the share of host RAM for KV cache
MAX_TOKENS = 256
ERROR_MESSAGE_MAX_CHARS = 500
S3_MULTIPART_THRESHOLD = 64 * 1024 * 1024
S3_MULTIPART_CHUNK = 16 * 1024 * 1024
S3_MAX_ATTEMPTS = 10
CANCEL_GRACE_S = 60.0  # how long a cancelled job waits for its running attempts to stop
COUNTS_POLL_S = 2.0  # how often workers' token and row counts reach the coordinator
MAX_RUNNING_JOBS = 4
IDLE_RELEASE_S = 600.0  # a pool with no job for this long gives its GPUs back
SCHEDULER_TICK_S = 1.0
RECORD_SAVE_S = 5.0  # how often the progress of running jobs is checkpointed to the state store
METRICS_RETENTION_S = 3600.0  # series of a finished job are dropped after this
