"""Where an engine's processes run on a CPU-only node: the model's cores for the model alone.

vLLM's CPU engine binds its model worker's compute threads to the node's cores but one, which it
reserves for "the scheduler process", and then leaves every other thread free to run anywhere: its
own busy-polling scheduler, and this worker's Python (prompt rendering, tokenising, asyncio, Ray).
On a small node they land on the model's cores and take its time slices (measured: the model worker
got 0.91 of its core in a job, 1.00 once the rest was moved off it). A generation worker's process
exists for its engines, so it starts each one inside `all_cores` (the engine's binding sees the whole
node) and then moves every thread of itself and its engines' other processes onto the cores the model
workers are not bound to (`off_model_cores`). Linux only, and only where the model workers leave a
core free; elsewhere both do nothing.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import psutil

_MODEL_WORKER = "VLLM::Worker"  # the process title vLLM gives its model workers
_allowed: set[int] = set()  # the cores this process may use, as it found them before it moved anything


def _node_cores() -> set[int]:
    if not _allowed:
        _allowed.update(os.sched_getaffinity(0))
    return _allowed


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _pin(pids: list[int], cores: set[int]) -> None:
    for pid in pids:
        for tid in _threads(pid):
            with contextlib.suppress(OSError):  # a thread that just ended
                os.sched_setaffinity(tid, cores)


def _tree() -> tuple[list[int], set[int]]:
    """(this process and its descendants other than model workers, the cores the model workers are bound to)."""
    me = psutil.Process()
    others, model_cores = [me.pid], set()
    for child in me.children(recursive=True):
        try:
            if child.name().startswith(_MODEL_WORKER):
                model_cores |= os.sched_getaffinity(child.pid)
            else:
                others.append(child.pid)
        except (psutil.Error, OSError):
            continue
    return others, model_cores


def off_model_cores() -> list[int]:
    """Pin every thread but the model workers' onto this process's cores minus the model workers'; the cores used."""
    if not hasattr(os, "sched_setaffinity"):
        return []
    others, model_cores = _tree()
    free = _node_cores() - model_cores
    if not model_cores or not free:
        return []
    _pin(others, free)
    return sorted(free)


def restore() -> None:
    """Every thread of this process back on the cores it found, once its engines have stopped: a process
    that outlives them (an in-process preview, a test) and its future children get the whole node."""
    if hasattr(os, "sched_setaffinity") and _allowed:
        _pin([os.getpid()], _allowed)


@contextlib.contextmanager
def all_cores() -> Iterator[None]:
    """This process's threads on every allowed core while an engine starts (its binding reads this process's
    cores), then off the model workers' cores again."""
    if hasattr(os, "sched_setaffinity"):
        _pin(_tree()[0], _node_cores())
    try:
        yield
    finally:
        off_model_cores()
