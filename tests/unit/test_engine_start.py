"""Engine start: the CPU KV cache is sized explicitly from what the NUMA node has available, and a
failed start reports vLLM's own error line."""

from __future__ import annotations

import pytest

from orchestrator import defaults
from tests.unit.specs import make_spec
from workers.engine import GIB, cpu_kv_cache_bytes, memory_args, root_cause

# The machine the defect was found on: node 0 of 9.96 GiB total, 7.66 GiB available, the engine's RSS
# 1.05 GiB; vLLM's rule gave 0.1 x 9.96 - 1.05 = -0.05 GiB ("requested memory for kv (-0.11/0.95 GiB)").
NODE_TOTAL, NODE_AVAILABLE, ENGINE_RSS = 9.96 * GIB, 7.66 * GIB, 1.05 * GIB


def test_vllms_own_rule_is_negative_on_that_node() -> None:
    assert defaults.CPU_GPU_MEMORY_UTILIZATION * NODE_TOTAL - ENGINE_RSS < 0


def test_kv_cache_on_that_node_is_a_quarter_of_available_memory() -> None:
    size = cpu_kv_cache_bytes(int(NODE_AVAILABLE))
    assert size == int(0.25 * NODE_AVAILABLE)
    assert GIB <= size <= 4 * GIB
    assert size + ENGINE_RSS < NODE_AVAILABLE


@pytest.mark.parametrize(("available_gib", "expected_gib"), [(3.4, 1.0), (64, 4.0), (512, 4.0), (1.5, 0.75)])
def test_kv_cache_is_bounded_and_never_more_than_half_the_available_memory(available_gib: float,
                                                                            expected_gib: float) -> None:
    assert cpu_kv_cache_bytes(int(available_gib * GIB)) == pytest.approx(expected_gib * GIB, abs=1)


def test_the_spec_can_set_the_kv_cache_on_cpu_and_gpu() -> None:
    spec = make_spec(model={"id": "org/m", "kv_cache_gib": 2.5})
    for on_gpu in (False, True):
        assert memory_args(spec.model, on_gpu=on_gpu) == {"kv_cache_memory_bytes": int(2.5 * GIB)}


def test_on_cpu_the_kv_cache_is_always_explicit() -> None:
    spec = make_spec(model={"id": "org/m"})
    args = memory_args(spec.model, on_gpu=False, available=lambda: int(NODE_AVAILABLE))
    assert args["kv_cache_memory_bytes"] == cpu_kv_cache_bytes(int(NODE_AVAILABLE))
    assert "kv_cache_memory_bytes" not in memory_args(spec.model, on_gpu=True)


def test_the_kv_cache_size_is_not_part_of_the_job_id() -> None:
    a = make_spec(model={"id": "org/m"})
    b = make_spec(model={"id": "org/m", "kv_cache_gib": 3})
    assert a.job_id == b.job_id


# What a Ray worker's log held when vLLM's CPU engine could not size its KV cache (trimmed).
FAILED_START_LOG = """\
(EngineCore pid=5432) INFO 12-01 21:37:40 [core.py:101] Initializing a V1 LLM engine
(Worker pid=5734) ERROR 12-01 21:37:48 [multiproc_executor.py:1063] Traceback (most recent call last):
(Worker pid=5734) ERROR 12-01 21:37:48 [multiproc_executor.py:1063]     raise ValueError(
(Worker pid=5734) ERROR 12-01 21:37:48 [multiproc_executor.py:1063] ValueError: Available memory on node 0 \
(7.66/9.96 GiB) on kv cache allocation is less than requested memory for kv (-0.11/0.95 GiB). Reduce CPU \
memory used by other processes.
(EngineCore pid=5432) ERROR 12-01 21:37:48 [core.py:1510] RuntimeError: Worker failed with error 'Available \
memory on node 0', please check the stack trace above for the root cause
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""


def test_root_cause_is_vllms_own_error_line() -> None:
    assert root_cause(FAILED_START_LOG) == (
        "ValueError: Available memory on node 0 (7.66/9.96 GiB) on kv cache allocation is less than requested "
        "memory for kv (-0.11/0.95 GiB). Reduce CPU memory used by other processes.")


def test_no_root_cause_in_vllms_wrappers_alone() -> None:
    assert root_cause("RuntimeError: Engine core initialization failed. See root cause above.") is None
