"""What `synthfleet run` shows while a job runs: a progress bar on a terminal, plain lines otherwise.

The bar's total is known before anything starts, committed rows of an earlier run count at once, and
its label says the phase (starting Ray, loading the model) until rows are generated. Piped to a file
or a CI log, the same progress is one plain line per phase change and every `PLAIN_EVERY_S` seconds.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

PLAIN_EVERY_S = 10.0


class RunDisplay:
    def __init__(self, name: str, console: Console, *, quiet: bool = False):
        self.name, self.console, self.quiet = name, console, quiet
        self.plain = not console.is_terminal
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("rows  {task.fields[tps]:>8.0f} tokens/s"), TimeElapsedColumn(),
                            TextColumn("ETA"), TimeRemainingColumn(), console=console,
                            disable=quiet or self.plain)
        self.task = self.bar.add_task(name, total=None, tps=0.0)
        self.last_phase, self.last_line = "", 0.0

    def __enter__(self) -> RunDisplay:
        self.bar.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.bar.__exit__(kind, value, tb)

    def update(self, p: Any) -> None:
        """`p`: an orchestrator.run.driver.Progress."""
        tps = p.completion_tokens / p.seconds if p.seconds and p.phase == "generating" else 0.0
        label = self.name if p.phase == "generating" else f"{self.name} ({p.phase})"
        self.bar.update(self.task, description=label, total=p.rows_total or None, completed=p.rows_done, tps=tps)
        now = time.monotonic()
        if self.plain and not self.quiet and (p.phase != self.last_phase or now - self.last_line >= PLAIN_EVERY_S):
            self.console.print(f"{self.name}: {p.phase}, {p.rows_done}/{p.rows_total} rows, {tps:,.0f} tokens/s",
                               highlight=False, markup=False)
            self.last_phase, self.last_line = p.phase, now
