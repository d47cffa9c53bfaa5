"""The dataset card: `README.md` of a job folder, read by people and by Hugging Face `datasets`.

Its YAML header names the configs (`default`: data/ as the train split; `rejected`, `errors` and
`mixed` where the job has such files), so `load_dataset(job_folder)` loads the kept rows without a
`data_dir`. Its body says what was generated, the counts and quality figures of the manifest, what
each row's lineage holds, and how to run the job again. Pure: a manifest and its spec in, text out.
The header is dumped by yaml.safe_dump; user text in the body goes through `markdown`.
"""

from __future__ import annotations

from typing import Any

import yaml

from orchestrator.commit import layout
from orchestrator.finalize.card_quality import flags_section, quality_section
from orchestrator.finalize.card_spec import generated_section
from orchestrator.finalize.manifest import Manifest
from orchestrator.finalize.markdown import code, fenced, num, table, text
from orchestrator.finalize.quality_report import QualityReport
from orchestrator.spec.job import JobSpec

# (config, folder, what its rows are): `default` first, the train split `load_dataset(job_folder)` gives
CONFIGS = (("default", layout.DATA_DIR, "kept rows: what passed every gate"),
           ("rejected", layout.REJECTED_DIR, ("rows a filter, the judge, dedup or a target turned away, with "
                                              "`reject_reason` and `reject_detail`")),
           ("errors", layout.ERRORS_DIR, "rows that failed, with `error_code` and `error_message`"),
           ("mixed", layout.MIXED_DIR, "kept rows interleaved with real ones, with a `source` column"))
# The hub's size_categories, by the upper bound of each
SIZE_CATEGORIES = ((10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"),
                   (10**7, "1M<n<10M"), (10**8, "10M<n<100M"), (10**9, "100M<n<1B"), (10**10, "1B<n<10B"),
                   (10**11, "10B<n<100B"), (10**12, "100B<n<1T"))
LINEAGE = (("spec_hash", "the spec hash above"),
           ("model", "the model (local folder or hub id)"),
           ("model_revision", "the hub revision, or a fingerprint of the local weights"),
           ("template_hash", "a hash of the prompt template the row was rendered from"),
           ("seed", "the row's sampling seed, derived from `sampling.seed` and the row"),
           ("sampling", "the row's sampling parameters as JSON, per-row draws included"))


def card(manifest: Manifest, spec: JobSpec) -> str:
    """The dataset card of a finished job: the YAML header, then each section that applies to it."""
    q = manifest.quality
    head = yaml.safe_dump(header(manifest), sort_keys=False, allow_unicode=True)
    sections = [_intro(manifest), _loading(manifest), generated_section(manifest, spec), _rows(q), _cost(q),
                quality_section(q), flags_section(q), _lineage(manifest, spec), _reproduce(manifest)]
    return f"---\n{head}---\n\n" + "\n\n".join(s for s in sections if s) + "\n"


def header(manifest: Manifest) -> dict[str, Any]:
    """The card's metadata: the configs `datasets` loads, and what the hub lists a dataset by."""
    present = config_rows(manifest)
    return {"pretty_name": manifest.name, "tags": ["synthetic", "synthfleet"], "task_categories": ["text-generation"],
            "language_creators": ["machine-generated"], "size_categories": [size_category(manifest.rows_ok)],
            "configs": [{"config_name": name, "data_files": [{"split": "train", "path": f"{folder}/*.parquet"}]}
                        for name, folder, _ in CONFIGS if name in present]}


def config_rows(manifest: Manifest) -> dict[str, int]:
    """The rows of each config the job has files for; `default` (data/) always."""
    rows = {"default": manifest.rows_ok}
    if any(s.rejected_paths for s in manifest.shards):
        rows["rejected"] = manifest.rows_rejected
    if any(s.errors_path for s in manifest.shards):
        rows["errors"] = manifest.rows_failed
    if manifest.mixed is not None and manifest.mixed.parts:
        rows["mixed"] = manifest.mixed.rows
    return rows


def size_category(rows: int) -> str:
    return next((name for bound, name in SIZE_CATEGORIES if rows < bound), "n>1T")


def _intro(m: Manifest) -> str:
    return (f"# {text(m.name)}\n\nSynthetic data made by synthfleet: job {code(m.job_id)}, {m.rows_ok:,} kept rows "
            f"of {m.quality.rows.input:,} planned. `{layout.MANIFEST}` is the job's commit point, written last: it "
            "lists every file with its rows and SHA-256, and a folder holding this card without it is a job that "
            f"has not finished. [{layout.REPORT}]({layout.REPORT}) shows the figures below with plots and "
            "example rows.")


def _loading(m: Manifest) -> str:
    rows = config_rows(m)
    path = f"path/to/{m.job_id}"
    calls = ["from datasets import load_dataset", "",
             f'train = load_dataset("{path}", split="train")  # {layout.DATA_DIR}/']
    calls += [f'{name} = load_dataset("{path}", "{name}", split="train")  # {folder}/'
              for name, folder, _ in CONFIGS[1:] if name in rows]
    configs = [[code(name), f"`{folder}/`", num(rows[name]), what] for name, folder, what in CONFIGS if name in rows]
    return ("## Load it\n\n" + fenced("\n".join(calls), "python") + "\n\n"
            + table(["config", "files", "rows", "what"], configs)
            + "\n\nEvery config has one split, `train`. The Parquet files read as they are with pyarrow, DuckDB "
              "or Spark too; names starting with `_` are bookkeeping, which those readers skip.")


def _rows(q: QualityReport) -> str:
    r = q.rows
    counts = [["input", num(r.input), "rows planned: prompts × `sampling.n`"],
              ["generated", num(r.generated), "rows the model completed"],
              ["kept", num(r.kept), f"`{layout.DATA_DIR}/`, the train split"],
              ["failed", num(r.failed), f"`{layout.ERRORS_DIR}/`"],
              ["rejected", num(sum(r.rejected.values())), f"`{layout.REJECTED_DIR}/`"]]
    parts = ["## Rows", table(["rows", "count", "where"], counts)]
    if r.rejected:
        by_reason = sorted(r.rejected.items(), key=lambda kv: (-kv[1], kv[0]))
        parts += ["Rejected by reason:", table(["reason", "rows"], [[code(k), num(n)] for k, n in by_reason])]
    if r.errors:
        by_code = [[code(e.code), num(e.rows)] for e in r.errors]
        parts += ["Failed by error code:", table(["error code", "rows"], by_code)]
    return "\n\n".join(parts)


def _cost(q: QualityReport) -> str:
    a, t = q.about, q.about.tokens
    rows = [["prompt tokens", num(t.get("prompt_tokens", 0))],
            ["completion tokens", num(t.get("completion_tokens", 0))]]
    if t.get("judge_prompt_tokens"):
        cached = num(t.get("judge_cached_tokens", 0))
        rows += [["judge prompt tokens", f"{num(t['judge_prompt_tokens'])} ({cached} cached)"],
                 ["judge completion tokens", num(t.get("judge_completion_tokens", 0))]]
    rows += [["wall time", f"{num(a.wall_seconds, 4)} s"],
             ["throughput", f"{num(a.completion_tokens_per_s, 4)} completion tokens/s"],
             ["generation time", f"{num(a.generation_seconds, 4)} s, summed over shards"],
             ["finished", text(a.finished_at)]]
    return "## Tokens and throughput\n\n" + table(["", ""], rows)


def _lineage(m: Manifest, spec: JobSpec) -> str:
    staged = [("stages", "per stage: its template hash, model and sampling (JSON)")] if spec.stages else []
    revisions = ", ".join(text(r) for r in m.model_revisions) or "–"
    return (f"## Lineage\n\nSpec hash `{m.spec_hash}`: a SHA-256 of what determines the data (name, model, prompts, "
            "sampling and the gates), not of where it was written or how fast. Row ids derive from the spec, so the "
            f"same row has the same `row_id` in every run. Model revision: {revisions}. Every row's `lineage` "
            "column holds:\n\n" + table(["field", "what"], [[code(k), what] for k, what in [*LINEAGE, *staged]]))


def _reproduce(m: Manifest) -> str:
    command = (f"synthfleet run {layout.SPEC} --output PARENT   "
               f"# PARENT: the folder (or s3:// prefix) holding {m.job_id}/")
    return ("## Reproduce or resume\n\n"
            f"`{layout.SPEC}` is the spec as it ran. From this folder:\n\n" + fenced(command, "bash") + "\n\n"
            "Given the folder that holds this job folder, `run` resumes an unfinished job (committed shards are "
            "skipped, nothing committed is generated again) and leaves a finished one as it is. Given another "
            f"folder it makes the job again: the same spec gives the same job id ({code(m.job_id)}), row ids, "
            "prompts and per-row seeds, so the same rows from the same model revision. Input files are read from "
            f"the paths `{layout.SPEC}` holds.")
