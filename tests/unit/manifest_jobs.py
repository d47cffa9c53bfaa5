"""Two finished jobs whose `_manifest.json` pins the on-disk format: `full` has every optional part
(filters, judge, exact and near dedup, a reference, a mixed split, failed rows), `plain` none of them.

Run as a script to rewrite the golden files in `fixtures/` (only when the format changes on purpose):

    python -m tests.unit.manifest_jobs
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from orchestrator.commit import layout
from orchestrator.finalize.finish import finalize
from orchestrator.plan.planner import make_plan
from orchestrator.spec.job import JobSpec
from orchestrator.storage import LocalStore
from tests.unit.specs import make_spec
from tests.unit.test_samples import PERSONAS, run_planted

FIXTURES = Path(__file__).parent / "fixtures"
VOLATILE = {"started_at", "finished_at", "wall_seconds", "completion_tokens_per_s", "generation_seconds",
            "seconds", "sha256", "bytes"}  # clock readings, and what depends on them (Parquet footers hold seconds)


def _spec(kind: str, folder: Path) -> JobSpec:
    seeds = {"persona": PERSONAS, "i": list(range(10))}
    if kind == "plain":
        return make_spec(folder, prompts={"template": {"text": "{{ persona }} {{ i }}", "seeds": seeds}},
                         output={"uri": str(folder), "rows_per_shard": 8})
    real = "real.jsonl"  # relative (the working directory is the folder): the job id hashes its URI
    (folder / real).write_text("".join(json.dumps({"text": f"a real text number {i} about {p}"}) + "\n"
                            for i in range(20) for p in PERSONAS) + "not json\n")
    return make_spec(folder, prompts={"template": {"text": "{{ persona }} {{ i }}", "seeds": seeds}},
                     output={"uri": str(folder), "rows_per_shard": 8},
                     judge={"min_score": 5, "levels": {s: f"level {s}" for s in range(1, 11)}},
                     filters={"deny": ["forbidden"]}, dedup={"exact": True, "near_threshold": 0.8},
                     quality={"reference": real}, mix={"uri": real, "ratio": 0.25})


def run(kind: str, folder: Path) -> bytes:
    """Generate and finalize the job on the planted engine in `folder`; the bytes of its `_manifest.json`."""
    with contextlib.chdir(folder):
        return _run(_spec(kind, folder), folder)


def _run(spec: JobSpec, folder: Path) -> bytes:
    plan = make_plan(spec)
    store = LocalStore(folder / plan.job_id)
    finalize(store, spec, plan, run_planted(store, spec, plan), started_at=0.0)
    return store.get(layout.MANIFEST)


# float32 embedding arithmetic whose last digits follow the BLAS build and the CPU's vector width: what
# a machine computes agrees with the golden file to these decimals
FLOAT32 = {"embedding_dispersion"}
FLOAT32_DIGITS = 5


def masked(blob: bytes, folder: Path) -> str:
    """The manifest's JSON with each volatile value replaced by its type and the job's folder by `<folder>`."""

    def mask(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: f"<{type(v).__name__}>" if k in VOLATILE and v is not None else
                    round(v, FLOAT32_DIGITS) if k in FLOAT32 and isinstance(v, float) else mask(v) for k, v in x.items()}
        if isinstance(x, list):
            return [mask(v) for v in x]
        return x.replace(str(folder), "<folder>") if isinstance(x, str) else x

    return json.dumps(mask(json.loads(blob)), indent=1) + "\n"


def golden(kind: str) -> Path:
    return FIXTURES / f"manifest_{kind}.json"


if __name__ == "__main__":
    import tempfile

    for kind in ("full", "plain"):
        with tempfile.TemporaryDirectory() as tmp:
            golden(kind).write_text(masked(run(kind, Path(tmp)), Path(tmp)))
            print(golden(kind))
