"""The simulated fleet on real Ray: hundreds of engines in two processes, each a worker the dispatcher
schedules, loses and replaces like a GenerationWorker; a whole job through `run_job` lands every row
exactly once (read back through the manifest)."""

from __future__ import annotations

from pathlib import Path

from orchestrator.results import read_table
from orchestrator.run.driver import run_job
from orchestrator.run.fleet import FleetPool
from orchestrator.spec.load import parse_spec
from orchestrator.spec.model import FakeEngineArgs


def test_three_hundred_simulated_engines_in_two_processes_run_a_job_once(ray_runtime: None, tmp_path: Path) -> None:
    once = tmp_path / "once"
    once.mkdir()
    spec = parse_spec({
        "name": "fleet",
        "model": {"path": "fake", "engine": "fake", "engine_args": {"tokens_per_s": 200}},
        "prompts": {"template": {"text": "row {{ i }}", "seeds": {"i": list(range(1200))}}},
        "sampling": {"max_tokens": 10},
        "output": {"uri": str(tmp_path / "out"), "rows_per_shard": 2},
        "resources": {"workers": 300, "gpus_per_worker": 0, "cpus_per_worker": 0, "shards_in_flight": 2},
    })
    # Engine 7 dies on row 15 once (it is replaced), engine 11 fails its first attempt at row 40.
    faulty = {7: FakeEngineArgs(tokens_per_s=200, die_rows=list(range(1200)), once_dir=str(once)),
              11: FakeEngineArgs(tokens_per_s=200, fail_rows=list(range(1200)), once_dir=str(once))}
    pool = FleetPool(spec.model, spec.resources, processes=2,
                     engine_args=lambda wid: faulty.get(wid, FakeEngineArgs(tokens_per_s=200)))
    try:
        result = run_job(spec, pool=pool)  # type: ignore[arg-type]
        assert result.workers_replaced == 1 and result.retries >= 2
        ids = read_table(result.uri).column("row_id").to_pylist()
        assert len(ids) == len(set(ids)) == 1200
        assert len(pool.workers) == 300  # the lost engine was replaced
        assert pool.requests() >= 1200
    finally:
        pool.close()
