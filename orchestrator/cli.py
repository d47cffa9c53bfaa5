"""`synthfleet` command line: run, validate, make-tiny-model."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from orchestrator import defaults, interrupts
from orchestrator.errors import ConfigError, JobInterrupted, ServerUnavailableError, SpecError, SynthfleetError
from orchestrator.jobs import JobRecord, JobState
from orchestrator.spec import JobSpec, load_spec

if TYPE_CHECKING:
    from orchestrator.client import Client

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _load(path: str, output: str | None) -> JobSpec:
    """The spec at `path` (`--output` overriding output.uri), saying on stderr which folder its relative
    input paths resolved against (when not the working directory) and what looks like a mistake."""
    from orchestrator.validate import spec_warnings

    spec = load_spec(path)
    spec = spec.with_output(output) if output else spec
    if spec.relative_to is not None and spec.relative_to.folder != os.getcwd():
        err.print(f"{path}: relative input paths resolved against {spec.relative_to.folder}", highlight=False)
    for warning in spec_warnings(spec):
        err.print(f"[bold yellow]warning:[/] {escape(str(warning))}", highlight=False)
    return spec


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
    from orchestrator.coordinator import run_job
    from orchestrator.display import RunDisplay

    try:
        spec = _load(args.spec, args.output)
    except SpecError as e:
        return _report_problems(args.spec, e)
    try:
        with RunDisplay(spec.name, err, quiet=args.quiet) as display:
            result = run_job(spec, ray_address=args.ray_address, on_progress=display.update,
                             worker_logs=args.verbose)
    except SpecError as e:
        return _report_problems(args.spec, e)
    except JobInterrupted as e:
        err.print(str(e), highlight=False)
        return interrupts.exit_code()
    except SynthfleetError as e:
        err.print(f"[bold red]job failed:[/] {e}", highlight=False)
        return EXIT_FAILED
    _print_summary(result, f"{result.shards_generated} of {result.shards} shards generated this run at "
                           f"{result.tokens_per_s:,.0f} tokens/s")
    return _failed_rows_status(result, args.max_failed_share)


def _print_summary(result: Any, throughput: str) -> None:
    """What a finished job made, its quality line and flags, its retries, and where its files are."""
    out.print(f"[bold green]done[/] {result.job_id}: {result.rows_ok} rows ok, {result.rows_failed} failed, "
              f"{result.rows_rejected} rejected; {result.completion_tokens} tokens; {throughput}", highlight=False)
    _print_quality(result.quality)
    if result.retries or result.workers_replaced:
        out.print(f"retries: {result.retries} shard attempts retried, {result.workers_replaced} workers replaced",
                  highlight=False)
    if result.storage_retries:
        out.print(f"storage: {result.storage_retries} object-storage calls retried (throttling, 5xx, dropped "
                  "connections); the storage_retries metric shows when", highlight=False)
    if result.stalls:
        out.print(f"stalls: {result.stalls} waits of more than {defaults.STALL_S:g} s with no shard committed "
                  f"(longest {result.longest_stall_s:.0f} s)", highlight=False)
    where = _shown(result.uri)
    out.print(f"data: {where}/data/  manifest: {where}/_manifest.json  report: {where}/quality_report.html",
              highlight=False)


def _failed_rows_status(result: Any, max_failed_share: float | None) -> int:
    """Top error codes with a sample message; non-zero when no row succeeded, or more failed than allowed."""
    from orchestrator.quality import failure_flag

    rows = (result.quality or {}).get("rows", {})
    for e in rows.get("top_errors", []):
        err.print(f"  errors/ {e['code']}: {e['rows']} rows, e.g. {e['sample']}", highlight=False, markup=False)
    flag = failure_flag(rows)
    if flag:
        err.print(f"[bold yellow]warning:[/] {escape(flag)}", highlight=False)
    total = result.rows_ok + result.rows_failed + result.rows_rejected
    share = result.rows_failed / total if total else 0.0
    if result.rows_failed and not result.rows_ok:
        err.print("[bold red]job failed:[/] no row succeeded; fix the cause above (the spec or its input), "
                  "then run again", highlight=False)
        return EXIT_FAILED
    if max_failed_share is not None and share > max_failed_share:
        err.print(f"[bold red]job failed:[/] {share:.1%} of rows failed, more than --max-failed-share "
                  f"{max_failed_share:g}", highlight=False)
        return EXIT_FAILED
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
    cut = q.get("truncation") or {}
    if cut.get("flagged"):
        err.print(f"[bold yellow]warning:[/] {cut['rows']:,} rows ({cut['share']:.0%}) stopped at max_tokens = "
                  f"{cut['max_tokens']}: their text is unfinished (raise sampling.max_tokens)", highlight=False)
    for title, drift in (("bias drift", q["drift"]), ("mixing drift", q.get("mixed_drift"))):
        for name in (drift or {}).get("flagged_variables", []):
            values = [str(v["value"]) for v in drift["variables"][name]["values"] if v["flagged"]]
            err.print(f"[bold yellow]warning:[/] {title} in seed variable {name!r}: {escape(', '.join(values))}",
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


def _client(args: argparse.Namespace) -> Client:
    from orchestrator.api import load_token
    from orchestrator.client import Client

    return Client(args.url, token=load_token(args.token_file))


def _config_error(e: ConfigError) -> int:
    err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
    return EXIT_BAD_INPUT


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the coordinator service; the token leaves the environment before Ray starts (see take_token)."""
    import uvicorn

    from orchestrator.api import MB, AnnouncingServer, create_app, http_url, is_loopback, listen_socket, take_token
    from orchestrator.service import Coordinator

    try:
        token = take_token(args.token_file)
    except ConfigError as e:
        return _config_error(e)
    if token is None and not is_loopback(args.host):
        err.print(f"refusing to listen on {args.host} without an API token: set SYNTHFLEET_API_TOKEN or "
                  "SYNTHFLEET_API_TOKEN_FILE (or --token-file), or listen on 127.0.0.1", highlight=False)
        return EXIT_BAD_INPUT
    try:
        sock = listen_socket(args.host, args.port)
    except OSError as e:
        err.print(f"cannot listen on {args.host}:{args.port}: {e.strerror or e}", highlight=False, markup=False)
        return EXIT_FAILED
    coordinator = Coordinator(args.state, ray_address=args.ray_address, max_running_jobs=args.max_running_jobs,
                              idle_release_s=args.idle_release_s)
    app = create_app(coordinator, token=token, max_body_bytes=int(args.max_body_mb * MB))
    banner = (f"synthfleet serving on {http_url(args.host, sock.getsockname()[1])} "
              f"(state: {args.state}, auth: {'token' if token else 'none'})")
    server = AnnouncingServer(uvicorn.Config(app, log_level="warning"),
                              lambda: out.print(banner, highlight=False, markup=False))
    server.run(sockets=[sock])
    return EXIT_OK


RECORD_COLUMNS = "{:<{w}}  {:<11}  {:>8}  {:>8}  {:>15}  {:>7}  {:>10}  {:>10}  {}"


def _print_records(records: Sequence[JobRecord]) -> None:
    """A header line, then one aligned line per job (its errors indented below it)."""
    w = max(len("JOB"), *(len(r.id) for r in records))
    out.print(RECORD_COLUMNS.format("JOB", "STATE", "PRIORITY", "PROGRESS", "ROWS DONE/TOTAL", "FAILED", "TOKENS",
                                    "TOKENS/S", "OUTPUT", w=w), highlight=False, markup=False)
    for r in records:
        c = r.request_counts
        out.print(RECORD_COLUMNS.format(r.id, r.state.value, r.priority, f"{r.progress:.1%}",
                                        f"{c.completed}/{c.total}", c.failed, r.completion_tokens,
                                        f"{r.tokens_per_s:,.0f}", r.output, w=w), highlight=False, markup=False)
        for error in r.errors:
            out.print(f"  error: {error}", highlight=False, markup=False)
        for warning in r.warnings:
            out.print(f"  warning: {warning}", highlight=False, markup=False)


def _print_record(record: JobRecord) -> None:
    _print_records([record])


def _remote(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A command that talks to a server: every failure is a short message and an exit code, no traceback."""
    def run(args: argparse.Namespace) -> int:
        try:
            return int(fn(args))
        except SpecError as e:
            return _report_problems(getattr(args, "spec", "spec"), e)
        except ConfigError as e:
            return _config_error(e)
        except ServerUnavailableError as e:
            err.print(f"{e} (--url, $SYNTHFLEET_URL)", highlight=False, markup=False)
            return EXIT_FAILED
        except SynthfleetError as e:
            err.print(f"[bold red]{type(e).__name__}:[/] {escape(str(e))}", highlight=False)
            return EXIT_FAILED
    return run


@_remote
def cmd_submit(args: argparse.Namespace) -> int:
    job = _client(args).submit(_load(args.spec, args.output), priority=args.priority,
                               idempotency_key=args.idempotency_key)
    if not args.wait:
        _print_record(job.status())
        return EXIT_OK
    return _wait(job, args)


def _wait(job: Any, args: argparse.Namespace) -> int:
    """`submit --wait`: the display and the summary of `run`, fed by the server's job record."""
    from orchestrator.coordinator import JobResult, Progress
    from orchestrator.display import RunDisplay
    from orchestrator.results import manifest, open_job

    def shown(r: JobRecord) -> Progress:
        phase = {JobState.QUEUED: "queued", JobState.FINALIZING: "finalizing"}.get(r.state, "generating")
        seconds = r.completion_tokens / r.tokens_per_s if r.tokens_per_s else 0.0
        return Progress(r.request_counts.total, r.request_counts.completed, r.completion_tokens, seconds, phase)

    with RunDisplay(job.id, err, quiet=args.quiet) as display:
        record = job.wait(on_update=lambda r: display.update(shown(r)))
    try:
        m = manifest(open_job(record.output))
    except Exception as e:  # the server's storage may not be reachable from here
        _print_record(record)
        err.print(f"(the job's manifest at {record.output} is not readable from here: {type(e).__name__})",
                  highlight=False, markup=False)
        return EXIT_OK
    result = JobResult(job_id=record.id, uri=record.output, rows_ok=m["rows_ok"], rows_failed=m["rows_failed"],
                       rows_rejected=m.get("rows_rejected", 0), prompt_tokens=m["prompt_tokens"],
                       completion_tokens=m["completion_tokens"], shards=m["num_shards"],
                       shards_generated=m["num_shards"], tokens_generated=record.completion_tokens, seconds=0.0,
                       generation_seconds=0.0, retries=record.retries, workers_replaced=record.workers_replaced,
                       quality=m.get("quality"))
    _print_summary(result, f"{result.shards} shards at {record.tokens_per_s:,.0f} tokens/s")
    return _failed_rows_status(result, None)


@_remote
def cmd_status(args: argparse.Namespace) -> int:
    record = _client(args).job(args.job_id).record
    if args.json:
        print(record.model_dump_json(indent=2))
    else:
        _print_record(record)
    return EXIT_OK


def _already_finished(record: JobRecord) -> int:
    out.print(f"job {record.id} already finished ({record.state.value}): nothing to cancel", highlight=False,
              markup=False)
    return EXIT_OK


@_remote
def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a job; one that has finished is left as it is, and the command says so."""
    job = _client(args).job(args.job_id)
    if job.record.terminal:
        return _already_finished(job.record)
    record = job.cancel()
    if record.state in (JobState.COMPLETED, JobState.FAILED):  # it finished between the two requests
        return _already_finished(record)
    _print_record(record)
    return EXIT_OK


@_remote
def cmd_jobs(args: argparse.Namespace) -> int:
    records = [job.record for job in _client(args).jobs(args.state)]
    if records:
        _print_records(records)
    else:
        out.print(f"no jobs in state {args.state}" if args.state else "no jobs", highlight=False)
    return EXIT_OK


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, except flags and unset options, whose help says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("synthfleet")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


URL_DEFAULT = "http://127.0.0.1:8000"
TOKEN_FILE_HELP = "file holding the API token (default: $SYNTHFLEET_API_TOKEN_FILE, else $SYNTHFLEET_API_TOKEN)"


def _remote_parsers(sub: Any) -> None:
    """submit, status, cancel and jobs: the commands that talk to a server started by `serve`."""
    for name, fn, text in (("submit", cmd_submit, "submit a spec to a server"),
                           ("status", cmd_status, "show one job"), ("cancel", cmd_cancel, "cancel a job"),
                           ("jobs", cmd_jobs, "list jobs")):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--url", default=os.environ.get("SYNTHFLEET_URL", URL_DEFAULT),
                         help="the server's URL ($SYNTHFLEET_URL sets the default)")
        cmd.add_argument("--token-file", help=TOKEN_FILE_HELP)
        cmd.set_defaults(fn=fn)
        if name == "submit":
            cmd.add_argument("spec", help="the job spec (YAML or JSON)")
            cmd.add_argument("--output", help="override output.uri (default: the spec's output.uri)")
            cmd.add_argument("--priority", type=int, default=0,
                             help="higher runs first; FIFO among jobs of the same priority")
            cmd.add_argument("--idempotency-key", help="the same key returns the same job instead of a second "
                                                       "one (default: none)")
            cmd.add_argument("--wait", action="store_true", help="wait for the job, with a progress bar")
            cmd.add_argument("--quiet", action="store_true", help="with --wait: no progress bar")
        elif name == "jobs":
            cmd.add_argument("--state", choices=[s.value for s in JobState],
                             help="only jobs in this state (default: every job)")
        else:
            cmd.add_argument("job_id", help="the job's id, as submit and jobs print it")
        if name == "status":
            cmd.add_argument("--json", action="store_true", help="print the whole job record as JSON")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="synthfleet", description="Distributed synthetic-data generation.",
                                formatter_class=HelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run (or resume) a job spec")
    run.add_argument("spec", help="the job spec (YAML or JSON)")
    run.add_argument("--output", help="override output.uri: folder, file:// or s3://bucket/prefix "
                                      "(default: the spec's output.uri)")
    run.add_argument("--ray-address", help="join this Ray cluster (default: start a local one)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.add_argument("--verbose", action="store_true", help="stream the workers' logs (vLLM, Ray)")
    run.add_argument("--max-failed-share", type=float, metavar="SHARE",
                     help="exit 1 when more than this share of rows went to errors/ (default: exit 1 only "
                          "when no row succeeded)")
    run.set_defaults(fn=cmd_run)
    val = sub.add_parser("validate", help="check a spec and its inputs without running it")
    val.add_argument("spec", help="the job spec (YAML or JSON)")
    val.add_argument("--output", help="override output.uri (default: the spec's output.uri)")
    val.set_defaults(fn=cmd_validate)
    show = sub.add_parser("show", help="summarise a finished job and print a few rows")
    show.add_argument("target", help="a job folder ({output}/{job_id}) or the spec that made it")
    show.add_argument("--rows", type=int, default=3, help="how many rows to print")
    show.add_argument("--output", help="override output.uri when TARGET is a spec (default: the spec's)")
    show.set_defaults(fn=cmd_show)
    _serve_parser(sub)
    _remote_parsers(sub)
    tiny = sub.add_parser("make-tiny-model", help="build a tiny random-weight model for demos and tests")
    tiny.add_argument("dir", help="the folder to write the model to")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    tiny.set_defaults(fn=cmd_make_tiny_model)
    for cmd in sub.choices.values():
        cmd.formatter_class = HelpFormatter
    return p


def _serve_parser(sub: Any) -> None:
    text = "run the coordinator service (HTTP API, queue, warm pools)"
    serve = sub.add_parser("serve", help=text, description=text)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on; any other than loopback "
                                                           "needs an API token")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one")
    serve.add_argument("--ray-address", help="join this Ray cluster (default: start a local one)")
    serve.add_argument("--state", default="outputs/_state", help="folder or s3:// URI for job records")
    serve.add_argument("--token-file", help=TOKEN_FILE_HELP)
    serve.add_argument("--max-running-jobs", type=int, default=defaults.MAX_RUNNING_JOBS,
                       help="jobs generating at once; the others wait in the queue")
    serve.add_argument("--idle-release-s", type=float, default=defaults.IDLE_RELEASE_S,
                       help="seconds a warm pool may stay without a job before its workers are released")
    serve.add_argument("--max-body-mb", type=_positive, default=defaults.MAX_BODY_MB,
                       help="larger request bodies are refused with HTTP 413")
    serve.set_defaults(fn=cmd_serve)


INTERRUPTED = {  # what Ctrl-C or SIGTERM leaves behind, when no command said more
    "run": "interrupted: run the same command again to resume",
    "serve": "interrupted: the service stopped; unfinished jobs resume when it starts again",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    interrupts.install()
    try:
        return int(args.fn(args))
    except KeyboardInterrupt:
        err.print(INTERRUPTED.get(args.command, "interrupted"), highlight=False)
        return interrupts.exit_code()


if __name__ == "__main__":
    sys.exit(main())
