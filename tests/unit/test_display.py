"""The run display: phases, totals up front, and plain lines when stderr is not a terminal."""

from __future__ import annotations

import io

from rich.console import Console

from orchestrator.coordinator import Progress
from orchestrator.display import RunDisplay


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
