"""Every default in one place, named, so a reader can find and a test can reference it."""

ROWS_PER_SHARD = 256
MAX_ATTEMPTS = 3
SHARDS_IN_FLIGHT = 3  # per worker: the engine's batch never drains between shards
RETRY_BACKOFF_S = 0.5
RETRY_BACKOFF_MAX_S = 10.0
GPU_MEMORY_UTILIZATION = 0.9
CPU_GPU_MEMORY_UTILIZATION = 0.1  # on the CPU backend vLLM's share of the NUMA node's RAM (unused: see below)
# The CPU backend's KV cache, sized explicitly: this share of the memory *available* on the engine's
# NUMA node, bounded. vLLM's own rule (utilization x node total - the engine's RSS) goes negative on
# a machine whose node 0 is small.
CPU_KV_CACHE_SHARE = 0.25
CPU_KV_CACHE_MIN_GIB = 1.0
CPU_KV_CACHE_MAX_GIB = 4.0
MAX_TOKENS = 256
ERROR_MESSAGE_MAX_CHARS = 500
TOP_ERRORS = 3  # error codes the summary, the report and the job record name
MAX_FAILED_SHARE = 0.05  # a larger share of rows in errors/ is flagged by the report and the job record
S3_MULTIPART_THRESHOLD = 64 * 1024 * 1024
S3_MULTIPART_CHUNK = 16 * 1024 * 1024
EXPORT_PART_BYTES = 8 * 1024 * 1024  # an export streamed to S3 holds one part of this in memory (S3's least: 5 MiB)
S3_MAX_ATTEMPTS = 10
# A worker Ray has not placed on a node in this time is given up (an autoscaler adds a node well within
# it); its start fails with the resources it asked for, rather than a job waiting on it for ever.
PLACEMENT_TIMEOUT_S = 600.0
STALL_S = 120.0  # a run's summary names each wait this long with no shard committed
CANCEL_GRACE_S = 60.0  # how long a cancelled job waits for its running attempts to stop
STEP_LINGER_S = 0.005  # how long a worker holds finished results for others finishing with them (workers/inbox.py)
COUNTS_POLL_S = 2.0  # how often workers' token and row counts reach the coordinator
MAX_RUNNING_JOBS = 4
IDLE_RELEASE_S = 600.0  # a pool with no job for this long gives its GPUs back
SCHEDULER_TICK_S = 1.0
RECORD_SAVE_S = 5.0  # how often the progress of running jobs is checkpointed to the state store
METRICS_RETENTION_S = 3600.0  # series of a finished job are dropped after this
JUDGE_RUBRIC = "The response follows the prompt, is correct, specific and well written."
# An anchored scale (every level described, as Prometheus does): a judge is more consistent on a few
# described levels than on a bare 1-10 anchored only at its ends.
JUDGE_LEVELS = {1: "wrong or off-topic", 2: "major errors or gaps", 3: "usable but flawed", 4: "good, minor flaws",
                5: "excellent: correct, specific, complete"}
JUDGE_MIN_SCORE = 3
JUDGE_ORDER = "reason_first"  # the judge reasons, then scores (a score written first is not reasoned)
JUDGE_REASON_MAX_CHARS = 80
JUDGE_SCORE_TOKENS = 4  # budget of a cut judgement's continuation: the score's digits and the end
NEAR_DUP_THRESHOLD = 0.8
MINHASH_PERMUTATIONS = 128
SHINGLE_WORDS = 3
LSH_CANDIDATE_PROBABILITY = 0.97  # LSH bands make a pair at the near-dup threshold a candidate at least this often
LSH_MATES_PER_BAND = 3  # per band, a row's candidates: its bucket's first row and the rows just before it, this many
NEAR_DUP_HELD_SHINGLES = 512  # a candidate row's shingle set is held whole up to this size, else its smallest hashes
MIN_REFERENCE_RATIO = 0.8  # diversity below this fraction of the reference's flags the job
DRIFT_MARGIN = 0.01  # a seed value whose loss rate differs from the others' by more than this (absolute) is flagged
REPLACED_DRIFT_THRESHOLD = 0.2  # the default of the replaced quality.drift_threshold, in every spec stored before
DRIFT_ALPHA = 0.01
QUALITY_SAMPLE_ROWS = 2000
REPORT_EXAMPLES = 5  # best and worst judged rows, and duplicate pairs, the report shows
REPORT_REJECTED_EXAMPLES = 3  # rejected rows shown per reason
REPORT_EXAMPLE_CHARS = 600  # a prompt or completion shown in the report is cut here
MAX_TRUNCATED_SHARE = 0.1  # a larger share of rows cut at max_tokens is flagged by the report and the summary
MAX_BODY_MB = 16.0  # the API refuses (413) a request body over this; inline seeds that big belong in a prompt file
MAX_JSON_DEPTH = 64  # lists and objects nested deeper in a request body are refused (422), never recursed into
# The OpenAI Batch API on `serve` (orchestrator/openai_api)
MAX_FILE_MB = 200.0  # an uploaded Batch input file over this is refused (413), as OpenAI's 200 MB limit
BATCH_ROWS_PER_SHARD = 64  # a batch's requests per shard: small, so a cancelled or expired batch keeps more
BATCH_POLL_S = 0.5  # how often the batch lifecycle follows its jobs and checks completion windows
MAX_COMPLETION_WINDOW_S = 7 * 24 * 3600
API_TOKEN_ENV = "SYNTHFLEET_API_TOKEN"
API_TOKEN_FILE_ENV = "SYNTHFLEET_API_TOKEN_FILE"
SECRET_ENV = (API_TOKEN_ENV, API_TOKEN_FILE_ENV)  # kept out of the environment of Ray and vLLM workers
# Templates (workers/sandbox.py): bounds that no prompt template can exceed, so none can hang a
# worker, `validate` or the service, or build a gigabyte. A row that hits one is a template_error.
MAX_PROMPT_CHARS = 1 << 20  # one row's rendered prompt (all its messages); also the largest value a template builds
MAX_TEMPLATE_INT_BITS = 4096  # an integer a template computes (`9**(9**9)` would take hours)
TEMPLATE_MAX_STEPS = 200_000  # loop iterations and calls in one row's render (about 0.1-0.3 s)
TEMPLATE_MACRO_STEPS = 20  # steps a macro call counts for: it costs about as much as 20 loop iterations
TEMPLATE_WORK_CHARS = 16 * MAX_PROMPT_CHARS  # characters a row's render may build in all, kept or not
TEMPLATE_CHECK_S = 5.0  # validation's time limit on analysing a template and on rendering its first rows
TEMPLATE_CHECK_ROWS = 3  # validation renders this many first rows; a template failing on all of them is refused
INPUT_CHECK_LINES = 5  # validation reads this many first rows of an input file for the columns it needs
