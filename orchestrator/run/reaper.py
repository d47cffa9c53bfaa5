"""No orphans: a watchdog process that ends what a process started once that process is gone.

A driver killed with SIGKILL leaves the local Ray cluster it started (GCS, raylet, agents); a Ray
worker killed the same way leaves its vLLM engine processes (`VLLM::EngineCore`, `VLLM::Worker`,
gigabytes each, sometimes busy), which nothing else ever stops. `start(pid)` spawns this file as a
script (standard library and psutil only, so it costs a few MB): it keeps a snapshot of `pid`'s
descendants and, when `pid` exits, terminates them, then kills what is left after a grace period.
A clean exit leaves nothing for it to do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

POLL_S = 0.5  # how often the watched process is checked
SNAPSHOT_S = 2.0  # how often its descendants are listed (a scan of every process on the machine)
GRACE_S = 3.0


def start(pid: int | None = None) -> subprocess.Popen[bytes]:
    """Watch `pid` (default: this process) from a process of its own session, which outlives it."""
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), str(pid or os.getpid())],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True, env={"PATH": os.environ.get("PATH", "")})


def watch(pid: int) -> None:
    import psutil

    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    me, known, listed = os.getpid(), {}, 0.0
    while parent.is_running() and parent.status() != psutil.STATUS_ZOMBIE:
        if time.monotonic() - listed >= SNAPSHOT_S:
            listed = time.monotonic()
            try:
                known.update({c.pid: c for c in parent.children(recursive=True) if c.pid != me})
            except psutil.NoSuchProcess:
                break
            known = {p: c for p, c in known.items() if c.is_running()}  # is_running also checks pid reuse
        time.sleep(POLL_S)
    left = [c for c in known.values() if c.is_running()]
    for c in left:
        try:
            c.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(left, timeout=GRACE_S)
    for c in alive:
        try:
            c.kill()
        except psutil.NoSuchProcess:
            pass


if __name__ == "__main__":
    watch(int(sys.argv[1]))
