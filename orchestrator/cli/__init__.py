"""`synthfleet` command line: run, validate, preview, show, export, make-tiny-model here; serve, submit, status,
cancel, jobs remotely."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from typing import Any

from orchestrator import defaults
from orchestrator.cli.common import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, err
from orchestrator.cli.local import cmd_export, cmd_make_tiny_model, cmd_run, cmd_show, cmd_validate
from orchestrator.cli.preview import cmd_preview
from orchestrator.cli.remote import cmd_cancel, cmd_jobs, cmd_serve, cmd_status, cmd_submit
from orchestrator.run import interrupts
from orchestrator.service.records import JobState

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_OK", "main", "parser"]


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
        cmd.add_argument("--ca-file", default=os.environ.get("SYNTHFLEET_CA_FILE"),
                         help="PEM file of the CA that signed an https server's certificate (default: "
                              "$SYNTHFLEET_CA_FILE, else the system's CAs)")
        cmd.add_argument("--insecure", action="store_true",
                         help="do not check an https server's certificate (default: checked)")
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
    _preview_parser(sub)
    show = sub.add_parser("show", help="summarise a finished job and print a few rows")
    show.add_argument("target", help="a job folder ({output}/{job_id}) or the spec that made it")
    show.add_argument("--rows", type=int, default=3, help="how many rows to print")
    show.add_argument("--output", help="override output.uri when TARGET is a spec (default: the spec's)")
    show.set_defaults(fn=cmd_show)
    _export_parser(sub)
    _serve_parser(sub)
    _remote_parsers(sub)
    tiny = sub.add_parser("make-tiny-model", help="build a tiny random-weight model for demos and tests")
    tiny.add_argument("dir", help="the folder to write the model to")
    tiny.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    tiny.set_defaults(fn=cmd_make_tiny_model)
    for cmd in sub.choices.values():
        cmd.formatter_class = HelpFormatter
    return p


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def _preview_parser(sub: Any) -> None:
    text = ("run the row program (stages, filters, judge) on a spec's first rows here, print each row and "
            "estimate the whole job; writes nothing")
    preview = sub.add_parser("preview", help=text, description=text)
    preview.add_argument("spec", help="the job spec (YAML or JSON)")
    preview.add_argument("--rows", type=_count, default=5, help="how many of the job's first rows to run")
    preview.set_defaults(fn=cmd_preview)


def _export_parser(sub: Any) -> None:
    from orchestrator.export.formats import BATCH_FILES, FORMATS

    text = "write a finished job's kept rows as OpenAI Batch output, plain JSONL or chat messages"
    export = sub.add_parser("export", help=text, description=text)
    export.add_argument("target", help="a job folder ({output}/{job_id}) or the spec that made it")
    export.add_argument("--format", required=True, choices=FORMATS,
                        help="openai-batch: OpenAI Batch API output and error files; jsonl: every column of "
                             "each kept row; chat: {\"messages\": [...]} for fine-tuning")
    export.add_argument("--output", required=True, metavar="DEST",
                        help=f"a path or s3:// URI: the file for jsonl and chat, the folder or prefix of "
                             f"{' and '.join(BATCH_FILES)} for openai-batch")
    export.add_argument("--force", action="store_true", help="replace an existing destination")
    export.add_argument("--spec-output", metavar="URI",
                        help="override output.uri when TARGET is a spec (default: the spec's)")
    export.set_defaults(fn=cmd_export)


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
    serve.add_argument("--autoscale", action="store_true",
                       help="the cluster grows with the queue (KubeRay's autoscaler): ask Ray's autoscaler for the "
                            "workers of running and next jobs, and queue a job the cluster cannot hold yet instead "
                            "of refusing it (default: off, jobs must fit the cluster as it is)")
    serve.add_argument("--max-body-mb", type=_positive, default=defaults.MAX_BODY_MB,
                       help="larger request bodies are refused with HTTP 413")
    serve.add_argument("--model", action="append", metavar="NAME=PATH_OR_ID",
                       help="a model OpenAI Batch requests may name (body.model): a local folder or a hub id; "
                            "repeatable (default: none)")
    serve.add_argument("--models", metavar="FILE", help="a YAML file of models OpenAI Batch requests may name, "
                                                        "each with its model, resources and sampling defaults "
                                                        "(default: none, only the --model ones)")
    serve.add_argument("--max-file-mb", type=_positive, default=defaults.MAX_FILE_MB,
                       help="larger uploads to /v1/files are refused with HTTP 413")
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
