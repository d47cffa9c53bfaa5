"""A real two-node Ray cluster started from the shell: a job that loses a node mid-run still ends
with every row exactly once.

The cluster is this test's own, apart from the session's in-process Ray (tests/integration/conftest.py):
its own temp dir, free ports, its own auth token, and no RAY_* variables inherited from this process.
Each node's `ray start`, and the CLI, runs in a session of its own: every process it starts stays in
that session (Ray's workers and vLLM's engines too, even once orphaned; an environment marker would
not do, vLLM's process titles overwrite it). That is how the test finds the second node's raylet to
kill and how the finalizer stops all it started. Never `ray stop`: it is machine-wide and would also
stop the session's Ray.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from orchestrator.commit import layout
from orchestrator.plan.planner import make_plan, row_id
from orchestrator.results import manifest, open_job, read_table
from orchestrator.spec.load import parse_spec
from tests.integration.conftest import MODEL_ARGS, make_spec

BIN = Path(sys.executable).parent  # the venv's `ray` and `synthfleet`
START_TIMEOUT_S = 90
JOB_TIMEOUT_S = 420
# Head: 2 CPUs, so after the second node dies its worker's replacement fits beside the head's
# worker (one that fits nowhere would keep the job waiting, see orchestrator/run/dispatch.py `_replace`).
# Second node: 1 CPU. Two 1-CPU workers land one per node (Ray packs the driver's node up to half
# full, then spreads), so the second node always holds a worker with shards in flight.
HEAD_CPUS, SECOND_CPUS = 2, 1
ROWS, ROWS_PER_SHARD = 128, 4  # 32 shards: many still to do when the first one commits
OBJECT_STORE_BYTES = 200 * 1024 * 1024
# Eager mode (no torch.compile) shortens each of the job's three engine starts: two, then the replacement.
ENGINE_ARGS = {**MODEL_ARGS["engine_args"], "enforce_eager": True}


def _free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 (held open together so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _session(pid: int) -> int | None:
    """The session id of process `pid` (field 6 of /proc/PID/stat), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[3])


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


@dataclass
class Cluster:
    """Handle on the nodes one test started: their address, environment and processes."""

    address: str
    token: str
    root: Path
    sessions: dict[str, int] = field(default_factory=dict)  # role (node or driver) -> its session id

    def env(self) -> dict[str, str]:
        """This process's environment without its Ray settings, joined to this cluster by its token."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0")
        return env

    def spawn(self, role: str, args: list[str], logs: Path) -> subprocess.Popen[bytes]:
        """Start `args` in a new session owned by `role`, its output to `logs`.{out,err}."""
        with open(f"{logs}.out", "wb") as out, open(f"{logs}.err", "wb") as err:
            proc = subprocess.Popen(args, env=self.env(), stdout=out, stderr=err, start_new_session=True)
        self.sessions[role] = proc.pid
        return proc

    def processes(self, role: str | None = None) -> list[int]:
        """Live processes started for `role`, or for any role."""
        wanted = set(self.sessions.values()) if role is None else {self.sessions[role]}
        return [int(p) for p in os.listdir("/proc") if p.isdigit() and _session(int(p)) in wanted]

    def raylet(self, role: str) -> int:
        (pid,) = [p for p in self.processes(role) if _comm(p) == "raylet"]
        return pid

    def start_node(self, role: str, args: list[str]) -> None:
        """`ray start` one node; it returns once the node is up, leaving its processes running."""
        logs = self.root / f"ray-start-{role}"
        proc = self.spawn(role, [str(BIN / "ray"), "start", *args, "--temp-dir", str(self.root / role),
                                 "--object-store-memory", str(OBJECT_STORE_BYTES), "--disable-usage-stats"], logs)
        code = proc.wait(timeout=START_TIMEOUT_S)
        assert code == 0, f"ray start ({role}) failed:\n{_tail(Path(f'{logs}.err'))}"

    def stop(self) -> None:
        """Kill every process this cluster started (raylets, GCS, workers, vLLM engines)."""
        for _ in range(5):  # a dying raylet may still be starting workers: sweep until none is left
            pids = self.processes()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        shutil.rmtree(self.root, ignore_errors=True)


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def _node_ports() -> list[str]:
    names = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"]
    return [str(a) for pair in zip(names, _free_ports(len(names))) for a in pair]


@pytest.fixture()
def cluster() -> Iterator[Cluster]:
    """A head (2 CPUs) and a second node (1 CPU, resource `second`), both on this machine."""
    gcs, client = _free_ports(2)
    # A short root: Ray's unix sockets live under it, and their paths are limited to 107 bytes.
    c = Cluster(f"127.0.0.1:{gcs}", uuid.uuid4().hex, Path(tempfile.mkdtemp(prefix="sfray")))
    try:
        c.start_node("head", ["--head", "--port", str(gcs), "--ray-client-server-port", str(client),
                              "--num-cpus", str(HEAD_CPUS), "--include-dashboard", "false", *_node_ports()])
        c.start_node("second", ["--address", c.address, "--num-cpus", str(SECOND_CPUS),
                                "--resources", json.dumps({"second": 1}), *_node_ports()])
        yield c
    finally:
        c.stop()


def _wait_for(condition: Callable[[], bool], timeout: float, context: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still waiting after {timeout:.0f} s; {context()}"
        time.sleep(0.2)




def _row_counts(job_uri: str) -> Counter[str]:
    data, errors = read_table(job_uri), read_table(job_uri, errors=True)
    return Counter(data.column("row_id").to_pylist() + errors.column("row_id").to_pylist())


def test_a_job_that_loses_a_node_mid_run_commits_every_row_exactly_once(cluster: Cluster, tiny_model: Path,
                                                                       tmp_path: Path) -> None:
    prompts = {"template": {"text": "Write a fact about the number {{ n }}.", "seeds": {"n": list(range(ROWS))}}}
    data = make_spec(tiny_model, str(tmp_path / "out"), prompts, rows_per_shard=ROWS_PER_SHARD).model_dump(mode="json")
    data["model"]["engine_args"] = ENGINE_ARGS
    spec, spec_path = parse_spec(data), tmp_path / "spec.json"
    spec_path.write_text(json.dumps(data))
    job = tmp_path / "out" / spec.job_id
    cli = cluster.spawn("driver", [str(BIN / "synthfleet"), "run", str(spec_path), "--ray-address",
                                   cluster.address], tmp_path / "cli")
    try:
        # Both engines are up once a shard commits (the pool grows before dispatching).
        _wait_for(lambda: any((job / layout.DATA_DIR).glob("*.parquet")) or cli.poll() is not None, JOB_TIMEOUT_S,
                  lambda: "CLI stderr:\n" + _tail(tmp_path / "cli.err"))
        assert cli.poll() is None and not (job / layout.MANIFEST).exists(), "the job ended before the kill"
        os.kill(cluster.raylet("second"), signal.SIGKILL)
        cli.wait(timeout=JOB_TIMEOUT_S)
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
    assert cli.returncode == 0, _tail(tmp_path / "cli.err")
    summary = re.search(r"retries: (\d+) shard attempts retried, (\d+) workers replaced", _tail(tmp_path / "cli.out"))
    assert summary is not None and int(summary[1]) >= 1 and int(summary[2]) >= 1, _tail(tmp_path / "cli.out")

    plan = make_plan(spec)
    counts = _row_counts(str(job))
    assert set(counts) == {row_id(plan.spec_hash, i) for i in range(plan.total_rows)}
    assert set(counts.values()) == {1}
    shards = manifest(open_job(str(job))).shards
    assert sorted(s.index for s in shards) == list(range(plan.num_shards))
    # The shards the lost worker held were retried on the head's workers (the replacement among them). A
    # retried shard's manifest entry names attempt 1 when the lost worker's commit had landed before its
    # reply was lost (the retry then found the shard committed and discarded its own copy), else a later one.
    retried = {int(i) for i in re.findall(r"shard (\d+) attempt \d+ failed", _tail(tmp_path / "cli.err", 10**6))}
    assert retried, _tail(tmp_path / "cli.err")
    assert retried <= {s.index for s in shards}
    assert not [p for p in cluster.processes("second") if _comm(p) == "raylet"]
