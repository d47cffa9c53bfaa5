"""The model's cores for the model: real processes, real affinity masks (a child titled as vLLM's model worker)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                                reason="needs Linux and two cores")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Run in a child interpreter: the check moves every thread of its process, which pytest's must not suffer.
SCRIPT = textwrap.dedent("""
    import json, os, subprocess, sys, threading, time
    from workers import placement

    cores = sorted(os.sched_getaffinity(0))
    model_core = cores[0]
    worker = subprocess.Popen([sys.executable, "-c",
        "import os, sys, time; open('/proc/self/comm', 'w').write('VLLM::Worker');"
        f"os.sched_setaffinity(0, {{{model_core}}}); sys.stdout.write('up'); sys.stdout.flush(); time.sleep(60)"],
        stdout=subprocess.PIPE)
    assert worker.stdout.read(2) == b"up"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    time.sleep(0.3)
    started = threading.Event()
    thread = threading.Thread(target=lambda: (started.set(), time.sleep(60)), daemon=True)
    thread.start(); started.wait()

    def masks():
        threads = [sorted(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")]
        return {"threads": threads, "worker": sorted(os.sched_getaffinity(worker.pid)),
                "other": sorted(os.sched_getaffinity(other.pid))}

    used = placement.off_model_cores()
    after = masks()
    with placement.all_cores():
        during = masks()
    again = masks()
    worker.kill(); other.kill()
    print(json.dumps({"cores": cores, "model_core": model_core, "used": used, "after": after,
                      "during": during, "again": again}))
""")


def _run(script: str) -> str:
    out = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_everything_but_the_model_worker_leaves_the_model_cores() -> None:
    out = _run(SCRIPT)
    got = json.loads(out)
    rest = [c for c in got["cores"] if c != got["model_core"]]
    assert got["used"] == rest
    assert got["after"]["worker"] == [got["model_core"]]  # the model worker keeps its own binding
    assert got["after"]["other"] == rest  # an engine's other processes (its scheduler) move off it
    assert all(t == rest for t in got["after"]["threads"])  # and every thread of this process, started or not
    # While another engine starts, its binding sees the whole node; then everything moves off again.
    assert all(t == got["cores"] for t in got["during"]["threads"]) and got["during"]["other"] == got["cores"]
    assert got["during"]["worker"] == [got["model_core"]]
    assert all(t == rest for t in got["again"]["threads"]) and got["again"]["other"] == rest


def test_nothing_moves_without_a_model_worker() -> None:
    script = ("import json, os; from workers import placement; before = sorted(os.sched_getaffinity(0)); "
              "print(json.dumps([placement.off_model_cores(), before, sorted(os.sched_getaffinity(0))]))")
    out = _run(script)
    used, before, after = json.loads(out)
    assert used == [] and after == before
