"""The run display: phases, totals up front, and plain lines when stderr is not a terminal."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from orchestrator.cli.display import RunDisplay
from orchestrator.run.driver import Progress


def _plain() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=False, width=200), buffer


def test_plain_output_has_a_line_per_phase_with_the_total_known_up_front() -> None:
    console, buffer = _plain()
    with RunDisplay("job", console) as display:
        display.update(Progress(64, 16, 0, 0.0, "starting Ray"))  # 16 rows committed by an earlier run
        display.update(Progress(64, 16, 0, 0.1, "loading the model"))
        display.update(Progress(64, 16, 500, 2.0, "generating"))
        display.update(Progress(64, 32, 900, 3.0, "generating"))  # same phase within 10 s: no line
    assert buffer.getvalue().splitlines() == [
        "job: starting Ray, 16/64 rows, 0 tokens/s",
        "job: loading the model, 16/64 rows, 0 tokens/s",
        "job: generating, 16/64 rows, 250 tokens/s",
    ]


def test_quiet_prints_nothing() -> None:
    console, buffer = _plain()
    with RunDisplay("job", console, quiet=True) as display:
        display.update(Progress(8, 0, 0, 0.0, "starting Ray"))
    assert buffer.getvalue() == ""


def test_the_bar_label_names_the_phase_until_generation() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    with RunDisplay("job", console) as display:
        display.update(Progress(8, 0, 0, 0.0, "loading the model"))
        assert display.bar.tasks[0].description == "job (loading the model)" and display.bar.tasks[0].total == 8
        display.update(Progress(8, 4, 100, 1.0, "generating"))
        assert display.bar.tasks[0].description == "job" and display.bar.tasks[0].completed == 4


def test_the_summary_counts_storage_retries_and_each_wait_with_no_commit(monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator import defaults
    from orchestrator.cli import local
    from orchestrator.plan.planner import make_plan
    from orchestrator.run import driver
    from tests.unit.specs import template_spec
    from workers.shard import WorkerCounts

    plan = make_plan(template_spec({"i": list(range(8))}))
    clock = iter([0.0, 0.0, 10.0, 10.0 + defaults.STALL_S + 5, 20.0 + defaults.STALL_S, 30.0 + 3 * defaults.STALL_S])
    monkeypatch.setattr(driver.time, "perf_counter", lambda: next(clock))
    tracker = driver.Tracker(plan)  # the clock's first reading
    tracker.started = driver.time.perf_counter()
    assert plan.num_shards == 4
    for shard in map(plan.shard, range(4)):  # commits at 10 s, STALL_S + 15 s (a stall), 10 s later, 2 STALL_S + 10 s later (one)
        tracker.done(shard, None)
    tracker.counted(WorkerCounts({}, {"retries": 3, "PutObject|ok": 9}))
    assert (tracker.stalls, tracker.longest_stall_s) == (2, 2 * defaults.STALL_S + 10)
    assert tracker.storage_retries == 3
    result = driver.JobResult(job_id="j", uri="s3://b/j", rows_ok=8, rows_failed=0, prompt_tokens=1,
                                   completion_tokens=2, shards=4, shards_generated=4, tokens_generated=2, seconds=1,
                                   generation_seconds=1, storage_retries=tracker.storage_retries,
                                   stalls=tracker.stalls, longest_stall_s=tracker.longest_stall_s)
    local.print_summary(result, "4 shards")
    printed = capsys.readouterr().out
    assert "storage: 3 object-storage calls retried" in printed
    assert f"stalls: 2 waits of more than {defaults.STALL_S:g} s with no shard committed (longest " \
           f"{2 * defaults.STALL_S + 10:.0f} s)" in printed
