"""The commands that run here: run, validate, show, export, make-tiny-model."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, Any

from rich.markup import escape

from orchestrator import defaults
from orchestrator.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    err,
    job_folder,
    load,
    out,
    report_problems,
)
from orchestrator.errors import JobInterrupted, SpecError, SynthfleetError
from orchestrator.run import interrupts

if TYPE_CHECKING:
    from orchestrator.finalize.quality_report import QualityReport
    from orchestrator.plan.planner import Plan
    from orchestrator.spec.job import JobSpec


def cmd_validate(args: argparse.Namespace) -> int:
    from orchestrator.plan.planner import make_plan
    from orchestrator.run.preflight import check_spec

    try:
        spec = load(args.spec, args.output)
        check_spec(spec)
        plan = make_plan(spec)
    except SpecError as e:
        return report_problems(args.spec, e)
    out.print(f"{args.spec}: ok — job {plan.job_id}, " + (
        _targets_plan(spec, plan) if spec.targets else f"{plan.total_rows} rows in {plan.num_shards} shards"))
    return EXIT_OK


def _targets_plan(spec: JobSpec, plan: Plan) -> str:
    """What a targets job plans before its first round: strata, targets, its first rows and its limits."""
    from orchestrator.plan.rounds import Strata, next_round
    from orchestrator.spec.targets import budget

    assert spec.targets is not None
    strata = Strata.of(spec)
    targeted = int(strata.targets.sum())
    first = plan if plan.total_rows else next_round(spec, plan, strata, None) or plan
    most = budget(spec.targets, plan.total_rows, targeted)
    return (f"{len(strata.items)} strata by {', '.join(strata.by)} targeting {targeted:,} kept rows; round 1: "
            f"{first.rows:,} rows in {first.num_shards} shards, at most {most:,} rows in "
            f"{spec.targets.max_rounds} rounds")


def cmd_run(args: argparse.Namespace) -> int:
    from orchestrator.cli.display import RunDisplay
    from orchestrator.run.driver import run_job

    try:
        spec = load(args.spec, args.output)
    except SpecError as e:
        return report_problems(args.spec, e)
    try:
        with RunDisplay(spec.name, err, quiet=args.quiet) as display:
            result = run_job(spec, ray_address=args.ray_address, on_progress=display.update,
                             worker_logs=args.verbose)
    except SpecError as e:
        return report_problems(args.spec, e)
    except JobInterrupted as e:
        err.print(str(e), highlight=False)
        return interrupts.exit_code()
    except SynthfleetError as e:
        err.print(f"[bold red]job failed:[/] {e}", highlight=False)
        return EXIT_FAILED
    print_summary(result, f"{result.shards_generated} of {result.shards} shards generated this run at "
                           f"{result.tokens_per_s:,.0f} tokens/s")
    return failed_rows_status(result, args.max_failed_share)


def print_summary(result: Any, throughput: str) -> None:
    """What a finished job made, its quality line and flags, its retries, and where its files are."""
    out.print(f"[bold green]done[/] {result.job_id}: {result.rows_ok} rows ok, {result.rows_failed} failed, "
              f"{result.rows_rejected} rejected; {result.completion_tokens} tokens; {throughput}", highlight=False)
    print_quality(result.quality)
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


def failed_rows_status(result: Any, max_failed_share: float | None) -> int:
    """Top error codes with a sample message; non-zero when no row succeeded, or more failed than allowed."""
    from orchestrator.finalize.passes import failure_flag

    rows = result.quality.rows if result.quality else None
    for e in rows.top_errors if rows else []:
        err.print(f"  errors/ {e.code}: {e.rows} rows, e.g. {e.sample}", highlight=False, markup=False)
    flag = failure_flag(rows) if rows else None
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


def print_quality(q: QualityReport | None) -> None:
    """One line of diversity, and a warning for each flag the quality report raised."""
    if q is None:
        return
    d = q.diversity
    out.print(f"quality: distinct-2 {d.get('distinct_2', 0):.3f}, compression ratio {d.get('compression_ratio', 0):.2f}, "
              f"mean similarity {d.get('mean_pairwise_similarity', 0):.3f} on {q.sample_rows} sampled rows",
              highlight=False)
    ref = q.reference
    if ref and ref.below_reference:
        err.print(f"[bold yellow]warning:[/] diversity below {ref.min_ratio:g} of the reference on "
                  f"{', '.join(ref.flagged)}: an early sign of collapse", highlight=False)
    cut = q.truncation
    if cut.flagged:
        err.print(f"[bold yellow]warning:[/] {cut.rows:,} rows ({cut.share:.0%}) stopped at max_tokens = "
                  f"{cut.max_tokens}: their text is unfinished (raise sampling.max_tokens)", highlight=False)
    print_targets(q)
    for title, drift in (("bias drift", q.drift), ("mixing drift", q.mixed_drift)):
        for name in drift.flagged_variables if drift is not None else []:
            values = drift.flagged_labels(name)
            err.print(f"[bold yellow]warning:[/] {title} in seed variable {name!r}: {escape(', '.join(values))}",
                      highlight=False)


def print_targets(q: QualityReport) -> None:
    """A targets job: one line of what the rounds cost, and a warning per stratum left short."""
    t = q.targets
    if t is None:
        return
    met = len(t.strata) - len(t.unmet)
    cost = f", cost {t.cost_ratio:.2f}x the fewest rows at these acceptance rates" if t.cost_ratio else ""
    out.print(f"targets: {met} of {len(t.strata)} strata met in {t.rounds} round(s), {t.rows_generated:,} rows "
              f"generated for {t.targeted:,} targeted{cost}", highlight=False)
    for s in t.strata:
        if not s.met:
            err.print(f"[bold yellow]warning:[/] stratum {escape(s.stratum)} short of its target: {s.kept:,} of "
                      f"{s.target:,} kept rows ({escape(s.why_not or '')})", highlight=False)


def cmd_show(args: argparse.Namespace) -> int:
    from orchestrator.results import manifest, open_job, read_table

    try:
        target = job_folder(args.target, args.output)
    except SpecError as e:
        return report_problems(args.target, e)
    try:
        m = manifest(open_job(target))
        table = read_table(target)
    except SynthfleetError as e:
        err.print(f"[bold red]{e}[/]", highlight=False)
        return EXIT_BAD_INPUT
    out.print(f"{target}: {m.rows_ok} rows ok, {m.rows_failed} in errors/, "
              f"{m.completion_tokens} completion tokens, {m.num_shards} shards", highlight=False)
    for row in (table.slice(0, args.rows).to_pylist() if table is not None else []):
        prompt = row["prompt"] if row["prompt"] is not None else row["messages"][-1]["content"]
        out.print(f"\n[bold]{row['row_id']}[/] prompt: {prompt!r}", highlight=False)
        out.print(f"  completion: {row['completion'][:200]!r}", highlight=False, markup=False)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from orchestrator.export import destination, write_job
    from orchestrator.results import manifest, open_job

    try:
        target = job_folder(args.target, args.spec_output)
    except SpecError as e:
        return report_problems(args.target, e)
    try:  # the job and the destination are checked before a row is read
        job = open_job(target)
        manifest(job)
        uploads = destination(args.format, args.output, force=args.force)
    except SynthfleetError as e:
        err.print(f"[bold red]{escape(str(e))}[/]", highlight=False)
        return EXIT_BAD_INPUT
    try:
        done = write_job(job, args.format, uploads)
    except SynthfleetError as e:
        err.print(f"[bold red]export failed:[/] {escape(str(e))}", highlight=False)
        return EXIT_FAILED
    files = " and ".join(_shown(f) for f in done.files)
    what = f"{done.lines:,} requests ({done.rows:,} rows)" if done.format == "openai-batch" else f"{done.rows:,} rows"
    out.print(f"exported {what} of {_shown(target)} to {files}", highlight=False, markup=False)
    if done.format == "openai-batch":
        out.print(f"errors.jsonl: {done.error_lines:,} failed requests; left out: {done.rejected_requests:,} "
                  f"requests every sample of which a gate rejected, {done.failed_samples:,} failed samples of "
                  "answered requests", highlight=False, markup=False)
    return EXIT_OK


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    from workers.tiny_model import build_tiny_model

    path = build_tiny_model(args.dir, seed=args.seed)
    out.print(f"tiny model written to {path}", highlight=False)
    return EXIT_OK
