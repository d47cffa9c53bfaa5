"""The commands that talk to a server (submit, status, cancel, jobs) and the one that is a server (serve)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from orchestrator.errors import ConfigError, ServerUnavailableError, SpecError, SynthfleetError
from orchestrator.service.records import JobRecord, JobState

if TYPE_CHECKING:
    from orchestrator.client import Client

from orchestrator.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, err, load, out, report_problems
from orchestrator.cli.local import failed_rows_status, print_summary


def _client(args: argparse.Namespace) -> Client:
    from orchestrator.client import Client
    from orchestrator.service.api import load_token

    verify = False if args.insecure else (args.ca_file or True)
    return Client(args.url, token=load_token(args.token_file), verify=verify)


def _config_error(e: ConfigError) -> int:
    err.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
    return EXIT_BAD_INPUT


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the coordinator service; the token leaves the environment before Ray starts (see take_token)."""
    import uvicorn

    from orchestrator.service.api import (
        MB,
        AnnouncingServer,
        create_app,
        http_url,
        is_loopback,
        listen_socket,
        take_token,
    )
    from orchestrator.service.coordinator import Coordinator

    from orchestrator.openai_api.served import served_models

    try:
        token = take_token(args.token_file)
    except ConfigError as e:
        return _config_error(e)
    try:
        models = served_models(args.model or [], args.models)
    except SpecError as e:
        return report_problems("models", e)
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
                              idle_release_s=args.idle_release_s, autoscale=args.autoscale)
    app = create_app(coordinator, token=token, max_body_bytes=int(args.max_body_mb * MB), models=models,
                     max_file_bytes=int(args.max_file_mb * MB))
    banner = (f"synthfleet serving on {http_url(args.host, sock.getsockname()[1])} "
              f"(state: {args.state}, auth: {'token' if token else 'none'}, "
              f"batch models: {', '.join(models) or 'none'})")
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
            return report_problems(getattr(args, "spec", "spec"), e)
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
    job = _client(args).submit(load(args.spec, args.output), priority=args.priority,
                               idempotency_key=args.idempotency_key)
    if not args.wait:
        _print_record(job.status())
        return EXIT_OK
    return _wait(job, args)


def _wait(job: Any, args: argparse.Namespace) -> int:
    """`submit --wait`: the display and the summary of `run`, fed by the server's job record."""
    from orchestrator.cli.display import RunDisplay
    from orchestrator.results import manifest, open_job
    from orchestrator.run.driver import JobResult, Progress

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
    result = JobResult(job_id=record.id, uri=record.output, rows_ok=m.rows_ok, rows_failed=m.rows_failed,
                       rows_rejected=m.rows_rejected, prompt_tokens=m.prompt_tokens,
                       completion_tokens=m.completion_tokens, shards=m.num_shards,
                       shards_generated=m.num_shards, tokens_generated=record.completion_tokens, seconds=0.0,
                       generation_seconds=0.0, retries=record.retries, workers_replaced=record.workers_replaced,
                       quality=m.quality)
    print_summary(result, f"{result.shards} shards at {record.tokens_per_s:,.0f} tokens/s")
    return failed_rows_status(result, None)


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
