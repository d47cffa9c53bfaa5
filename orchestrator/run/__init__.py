"""Stage 3, running one job: a spec and its plan in, committed shards and their stats out.

`preflight` and `input_checks` refuse bad input before anything starts; `ray_runtime` joins or
starts Ray; `pool` holds warm workers of one model (`fleet`: many simulated ones in a few processes,
for benchmarks and tests at scale); `dispatch` sends shards to them (through `handles`, the seam to
Ray, and `channel`, which carries a worker's attempts in batched calls) and retries what fails;
`driver` is the job driver (prepare, pool, execute, finalize); `interrupts` and `reaper` make Ctrl-C,
SIGTERM and a killed driver end cleanly.
"""
