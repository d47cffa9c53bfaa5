"""`synthfleet` command line: run, validate, make-tiny-model."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from orchestrator import defaults
from orchestrator.errors import SpecError, SynthfleetError
from orchestrator.jobs import JobState
from orchestrator.spec import JobSpec, load_spec

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _load(path: str, output: str | None) -> JobSpec:
    spec = load_spec(path)
    return spec.with_output(output) if output else spec


def _report_problems(path: str, e: SpecError) -> int:
    err.print(f"[bold red]{path}: {len(e.problems)} problem(s)[/]")
    for p in e.problems:
        err.print(f"  {p}", markup=False, highlight=False)
    return EXIT_BAD_INPUT


def cmd_validate(args: argparse.Namespace) -> int:
    from orchestrator.planner import make_plan
    from orchestrator.validate import check_spec

    try:
        spec = _load(args.spec, args.output)
        check_spec(spec)
        plan = make_plan(spec)
    except SpecError as e:
        return _report_problems(args.spec, e)
    out.print(f"{args.spec}: ok — job {plan.job_id}, {plan.total_rows} rows in {plan.num_shards} shards")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.coordinator import Progress as JobProgress
    from orchestrator.coordinator import run_job

    try:
        spec = _load(args.spec, args.output)
    except SpecError as e:
        return _report_problems(args.spec, e)
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("rows  {task.fields[tps]:>8.0f} tokens/s"), TimeElapsedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn(), console=err, disable=args.quiet)
    task = bar.add_task(spec.name, total=None, tps=0.0)

    def on_progress(p: JobProgress) -> None:
        tps = p.completion_tokens / p.seconds if p.seconds else 0.0
        bar.update(task, total=p.rows_total, completed=p.rows_done, tps=tps)

    try:
        with bar:
            result = run_job(spec, ray_address=args.ray_address, on_progress=on_progress,
                             worker_logs=args.verbose)
    except SpecError as e:
        return _report_problems(args.spec, e)
    except SynthfleetError as e:
        err.print(f"[bold red]job failed:[/] {e}", highlight=False)
        return EXIT_FAILED
    except KeyboardInterrupt:
        err.print("interrupted: committed shards are kept; run the same command again to resume")
        return EXIT_INTERRUPTED
    out.print(f"[bold green]done[/] {result.job_id}: {result.rows_ok} rows ok, {result.rows_failed} failed, "
              f"{result.rows_rejected} rejected; {result.completion_tokens} tokens; {result.shards_generated} of "
              f"{result.shards} shards generated this run at {result.tokens_per_s:,.0f} tokens/s", highlight=False)
    _print_quality(result.quality)
    where = _shown(result.uri)
    out.print(f"data: {where}/data/  manifest: {where}/_manifest.json  report: {where}/quality_report.html",
              highlight=False)
    return EXIT_OK


def _shown(uri: str) -> str:
    """A local job folder relative to the working directory when it is below it; other URIs as they are."""
    if "://" in uri or not os.path.isabs(uri):
        return uri
    rel = os.path.relpath(uri)
    return uri if rel.startswith("..") else rel


def _print_quality(q: dict[str, Any] | None) -> None:
    """One line of diversity, and a warning for each flag the quality report raised."""
    if not q:
        return
    d = q["diversity"]
    out.print(f"quality: distinct-2 {d.get('distinct_2', 0):.3f}, compression ratio {d.get('compression_ratio', 0):.2f}, "
              f"mean similarity {d.get('mean_pairwise_similarity', 0):.3f} on {q['sample_rows']} sampled rows",
              highlight=False)
    ref = q.get("reference")
    if ref and ref["below_reference"]:
        err.print(f"[bold yellow]warning:[/] diversity below {ref['min_ratio']:g} of the reference on "
                  f"{', '.join(ref['flagged'])}: an early sign of collapse", highlight=False)
    for name in q["drift"]["flagged_variables"]:
        values = [str(v["value"]) for v in q["drift"]["variables"][name]["values"] if v["flagged"]]
        err.print(f"[bold yellow]warning:[/] bias drift in seed variable {name!r}: {escape(', '.join(values))}",
                  highlight=False)


def cmd_show(args: argparse.Namespace) -> int:
    from orchestrator.results import manifest, open_job, read_table

    target = args.target
    if target.endswith((".yaml", ".yml", ".json")) and not target.rstrip("/").endswith("_manifest.json"):
        try:
            spec = _load(target, args.output)
        except SpecError as e:
            return _report_problems(target, e)
        target = f"{spec.output.uri.rstrip('/')}/{spec.job_id}"
    try:
        m = manifest(open_job(target))
        table = read_table(target)
    except SynthfleetError as e:
        err.print(f"[bold red]{e}[/]", highlight=False)
        return EXIT_BAD_INPUT
    out.print(f"{target}: {m['rows_ok']} rows ok, {m['rows_failed']} in errors/, "
              f"{m['completion_tokens']} completion tokens, {m['num_shards']} shards", highlight=False)
    for row in (table.slice(0, args.rows).to_pylist() if table is not None else []):
        prompt = row["prompt"] if row["prompt"] is not None else row["messages"][-1]["content"]
        out.print(f"\n[bold]{row['row_id']}[/] prompt: {prompt!r}", highlight=False)
        out.print(f"  completion: {row['completion'][:200]!r}", highlight=False, markup=False)
    return EXIT_OK


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from workers.tiny_model import build_tiny_model

    path = build_tiny_model(args.dir, seed=args.seed)
    out.print(f"tiny model written to {path}", highlight=False)
    return EXIT_OK


def _client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from orchestrator.api import load_token
    from orchestrator.client import Client

    return Client(args.url, token=load_token(args.token_file))


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from orchestrator.api import create_app, is_loopback, load_token
    from orchestrator.service import Coordinator

    token = load_token(args.token_file)
    if token is None and not is_loopback(args.host):
        err.print(f"refusing to listen on {args.host} without an API token: set SYNTHFLEET_API_TOKEN or "
                  "SYNTHFLEET_API_TOKEN_FILE (or --token-file), or listen on 127.0.0.1", highlight=False)
        return EXIT_BAD_INPUT
    coordinator = Coordinator(args.state, ray_address=args.ray_address, max_running_jobs=args.max_running_jobs,
                              idle_release_s=args.idle_release_s)
    uvicorn.run(create_app(coordinator, token=token), host=args.host, port=args.port, log_level="warning")
    return EXIT_OK


def _print_record(record) -> None:  # type: ignore[no-untyped-def]
    c = record.request_counts
    out.print(f"{record.id}  {record.state.value:<11} priority {record.priority:<3} "
              f"{record.progress:6.1%}  rows {c.completed}/{c.total} (failed {c.failed})  "
              f"{record.completion_tokens} tokens  {record.tokens_per_s:,.0f} tokens/s  {record.output}",
              highlight=False)
    for error in record.errors:
        out.print(f"  error: {error}", highlight=False, markup=False)


def _remote(fn):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except SpecError as e:
            return _report_problems(getattr(args, "spec", "spec"), e)
        except SynthfleetError as e:
            err.print(f"[bold red]{type(e).__name__}:[/] {e}", highlight=False)
            return EXIT_FAILED
    return run


@_remote
def cmd_submit(args: argparse.Namespace) -> int:
    job = _client(args).submit(_load(args.spec, args.output), priority=args.priority,
                               idempotency_key=args.idempotency_key)
    _print_record(job.wait(progress=not args.quiet) if args.wait else job.status())
    return EXIT_OK


@_remote
def cmd_status(args: argparse.Namespace) -> int:
    _print_record(_client(args).job(args.job_id).status())
    return EXIT_OK


@_remote
def cmd_cancel(args: argparse.Namespace) -> int:
    _print_record(_client(args).job(args.job_id).cancel())
    return EXIT_OK


@_remote
def cmd_jobs(args: argparse.Namespace) -> int:
    for job in _client(args).jobs(args.state):
        _print_record(job.status())
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="synthfleet", description="Distributed synthetic-data generation.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (or resume) a job spec")
    run.add_argument("spec")
    run.add_argument("--output", help="override output.uri (folder, file:// or s3://bucket/prefix)")
    run.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--verbose", action="store_true", help="stream the workers' logs (vLLM, Ray)")
    run.set_defaults(fn=cmd_run)
    val = sub.add_parser("validate", help="check a spec and its inputs without running it")
    val.add_argument("spec")
    val.add_argument("--output", help="override output.uri")
    val.set_defaults(fn=cmd_validate)
    show = sub.add_parser("show", help="summarise a finished job and print a few rows")
    show.add_argument("target", help="a job folder ({output}/{job_id}) or the spec that made it")
    show.add_argument("--rows", type=int, default=3)
    show.add_argument("--output", help="override output.uri when TARGET is a spec")
    show.set_defaults(fn=cmd_show)
    serve = sub.add_parser("serve", help="run the coordinator service (HTTP API, queue, warm pools)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--ray-address")
    serve.add_argument("--state", default="outputs/_state", help="folder or s3:// URI for job records")
    serve.add_argument("--token-file", help="file holding the API token (else $SYNTHFLEET_API_TOKEN)")
    serve.add_argument("--max-running-jobs", type=int, default=defaults.MAX_RUNNING_JOBS)
    serve.add_argument("--idle-release-s", type=float, default=defaults.IDLE_RELEASE_S)
    serve.set_defaults(fn=cmd_serve)
    for name, fn, text in (("submit", cmd_submit, "submit a spec to a server"),
                           ("status", cmd_status, "show one job"), ("cancel", cmd_cancel, "cancel a job"),
                           ("jobs", cmd_jobs, "list jobs")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--url", default=os.environ.get("SYNTHFLEET_URL", "http://127.0.0.1:8000"))
        cmd.add_argument("--token-file", help="file holding the API token (else $SYNTHFLEET_API_TOKEN)")
        cmd.set_defaults(fn=fn)
        if name == "submit":
            cmd.add_argument("spec")
            cmd.add_argument("--output")
            cmd.add_argument("--priority", type=int, default=0)
            cmd.add_argument("--idempotency-key")
            cmd.add_argument("--wait", action="store_true", help="wait for the job, with a progress bar")
            cmd.add_argument("--quiet", action="store_true")
        elif name == "jobs":
            cmd.add_argument("--state", choices=[s.value for s in JobState])
        else:
            cmd.add_argument("job_id")
    tiny = sub.add_parser("make-tiny-model", help="build a tiny random-weight model for demos and tests")
    tiny.add_argument("dir")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(fn=cmd_make_tiny_model)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
