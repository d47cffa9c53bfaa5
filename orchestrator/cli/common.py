"""What every command shares: exit codes, the two consoles, reading a spec and reporting its problems."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from orchestrator.errors import SpecError
from orchestrator.spec.job import JobSpec
from orchestrator.spec.load import load_spec

if TYPE_CHECKING:
    pass

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def load(path: str, output: str | None) -> JobSpec:
    """The spec at `path` (`--output` overriding output.uri), saying on stderr which folder its relative
    input paths resolved against (when not the working directory) and what looks like a mistake."""
    from orchestrator.run.preflight import spec_warnings

    spec = load_spec(path)
    spec = spec.with_output(output) if output else spec
    if spec.relative_to is not None and spec.relative_to.folder != os.getcwd():
        err.print(f"{path}: relative input paths resolved against {spec.relative_to.folder}", highlight=False)
    for warning in spec_warnings(spec):
        err.print(f"[bold yellow]warning:[/] {escape(str(warning))}", highlight=False)
    return spec


def job_folder(target: str, output: str | None) -> str:
    """The job folder (or URI) `target` names: itself, or when it is a spec file, the folder of the job
    that spec makes, `{output.uri}/{job_id}` (`output` overriding output.uri). SpecError for a bad spec."""
    if target.endswith((".yaml", ".yml", ".json")) and not target.rstrip("/").endswith("_manifest.json"):
        spec = load(target, output)
        return f"{spec.output.uri.rstrip('/')}/{spec.job_id}"
    return target


def report_problems(path: str, e: SpecError) -> int:
    err.print(f"[bold red]{path}: {len(e.problems)} problem(s)[/]")
    for p in e.problems:
        err.print(f"  {p}", markup=False, highlight=False)
    return EXIT_BAD_INPUT
