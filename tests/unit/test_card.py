"""The dataset card (`README.md` of a job folder), on hand-built manifests: its header is the configs
`datasets` reads (parsed by `datasets` and huggingface_hub themselves), each section is there only when
the report has its figures, and user text cannot break a table, the header or the page (rendered by a
CommonMark parser with GFM tables)."""

from __future__ import annotations

import json
from html import escape
from typing import Any

import pytest
import yaml
from huggingface_hub import DatasetCard
from markdown_it import MarkdownIt
from markdown_it.token import Token

from orchestrator.commit import layout
from orchestrator.finalize.card import card, size_category
from orchestrator.finalize.finish import finalize
from orchestrator.finalize.manifest import Manifest
from orchestrator.finalize.quality_report import (
    Drift,
    DriftValue,
    DriftVariable,
    StageQuality,
    StratumTarget,
    TargetsReport,
)
from orchestrator.plan.planner import make_plan
from orchestrator.spec.job import JobSpec
from orchestrator.storage import MemoryStore
from tests.unit.manifest_jobs import golden
from tests.unit.specs import make_spec
from tests.unit.test_samples import run_planted

HOSTILE = "a|b\nc `d` ```e``` <script>alert(1)</script> | & $x$ *f*"
FLAT = "a|b c `d` ```e``` <script>alert(1)</script> | & $x$ *f*"  # how it reads: one line, as written
UNMASKED = {"<int>": 1, "<float>": 1.5, "<str>": "2026-01-02T03:04:05+00:00"}


def manifest(kind: str, **changes: Any) -> Manifest:
    """A golden manifest (tests/unit/fixtures) with its masked clock readings filled in, then `changes`."""
    def fill(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: fill(v) for k, v in x.items()}
        if isinstance(x, list):
            return [fill(v) for v in x]
        return UNMASKED.get(x, x) if isinstance(x, str) else x

    return Manifest.model_validate(fill(json.loads(golden(kind).read_text()))).model_copy(update=changes)


def spec(**sections: Any) -> JobSpec:
    seeds = {"persona": ["a", "b", "c"], "i": list(range(10))}
    return make_spec(**{"prompts": {"template": {"text": "{{ persona }} {{ i }}", "seeds": seeds}}, **sections})


def header(text: str) -> dict[str, Any]:
    assert text.startswith("---\n")
    data: dict[str, Any] = yaml.safe_load(text.split("\n---\n", 1)[0][4:])
    return data


def configs(text: str) -> dict[str, list[dict[str, str]]]:
    return {c["config_name"]: c["data_files"] for c in header(text)["configs"]}


def train(folder: str) -> list[dict[str, str]]:
    return [{"split": "train", "path": f"{folder}/*.parquet"}]


def test_the_header_names_data_as_the_default_config_and_each_other_folder_the_job_has() -> None:
    assert configs(card(manifest("plain"), spec())) == {"default": train("data")}
    assert configs(card(manifest("full"), spec())) == {"default": train("data"), "rejected": train("rejected"),
                                                       "mixed": train("mixed")}


def test_a_job_with_failed_rows_has_an_errors_config() -> None:
    m = manifest("plain")
    shards = [m.shards[0].model_copy(update={"errors_path": layout.errors_key(0, 4)}), *m.shards[1:]]
    assert configs(card(m.model_copy(update={"shards": shards, "rows_failed": 2}), spec()))["errors"] == \
        train("errors")


def test_datasets_reads_the_header_as_its_configs_with_default_the_default() -> None:
    from datasets.utils.metadata import MetadataConfigs

    found = MetadataConfigs.from_dataset_card_data(DatasetCard(card(manifest("full"), spec())).data)
    assert list(found) == ["default", "rejected", "mixed"]
    assert found.get_default_config_name() == "default"
    assert found["default"]["data_files"] == train("data")


def test_the_header_carries_the_hub_metadata() -> None:
    h = header(card(manifest("full"), spec()))
    assert h["pretty_name"] == "unit" and "synthetic" in h["tags"] and h["size_categories"] == ["n<1K"]


@pytest.mark.parametrize(("rows", "category"), [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"),
                                                (123_456, "100K<n<1M"), (10**13, "n>1T")])
def test_the_size_category_is_the_hub_s_bucket_of_the_kept_rows(rows: int, category: str) -> None:
    assert size_category(rows) == category


def test_a_name_that_looks_like_yaml_stays_a_value_of_the_header() -> None:
    name = "x\n---\nconfigs: []\n'\"#: {"
    text = card(manifest("plain", name=name), spec())
    data = DatasetCard(text).data.to_dict()
    assert data["pretty_name"] == name and data["configs"][0]["config_name"] == "default"


def test_sections_of_a_job_without_gates_are_the_ones_its_report_has() -> None:
    text = card(manifest("plain"), spec())
    for present in ("## Load it", "## What was generated", "## Rows", "## Tokens and throughput", "### Diversity",
                    "### Bias drift", "## Flags", "## Lineage", "## Reproduce or resume"):
        assert present in text, present
    for absent in ("### Duplicates", "### Judge scores", "### Mixing drift", "### Targets", "### Per stage",
                   "Reference:", "Rejected by reason", "Failed by error code", "judge prompt tokens"):
        assert absent not in text, absent


def test_a_job_with_every_gate_has_their_sections() -> None:
    text = card(manifest("full"), spec())
    for present in ("### Duplicates", "### Judge scores", "### Mixing drift", "Reference: real.jsonl",
                    "Rejected by reason", "judge prompt tokens", "**Collapse warning:**"):
        assert present in text, present


def test_targets_and_stages_have_sections_when_the_report_has_them() -> None:
    m = manifest("plain")
    stratum = StratumTarget(stratum="persona=a", values=["a"], planned_share=1.0, target=10, generated=12, kept=8,
                            over_target=0, acceptance=0.66, rounds=2, met=False, why_not="max_rounds reached")
    targets = TargetsReport(by=["persona"], rounds=2, max_rounds=2, rows_generated=12, kept=8, targeted=10,
                            cost_ratio=1.2, strata=[stratum], unmet=["persona=a"], flagged=True)
    stages = {"answer": StageQuality(kind="generate", rows=8, truncated_share=0.0)}
    text = card(m.model_copy(update={"quality": m.quality.model_copy(update={"targets": targets,
                                                                             "stages": stages})}), spec())
    assert "### Targets" in text and "### Per stage" in text
    assert "**Target not met:** persona=a: 8 of 10 kept rows (max\\_rounds reached)." in text


def _tables(text: str) -> list[list[list[Token]]]:
    """Each table of the rendered page: its rows, each a list of its cells' inline tokens."""
    tables: list[list[list[Token]]] = []
    inside = False
    for token in MarkdownIt("commonmark").enable("table").parse(text):
        if token.type in ("table_open", "table_close"):
            inside = token.type == "table_open"
            tables += [[]] if inside else []
        elif inside and token.type == "tr_open":
            tables[-1].append([])
        elif inside and token.type == "inline":
            tables[-1][-1].append(token)
    return tables


def _cell_text(cell: Token) -> str:
    return "".join(c.content for c in cell.children or [] if c.type in ("text", "code_inline"))


def _hostile_report(m: Manifest) -> Manifest:
    value = DriftValue(value=HOSTILE, planned=10, kept=0, planned_share=0.5, kept_share=0.0, shift=-0.5,
                       loss_rate=1.0, rest_loss_rate=0.0, p_value=0.001, flagged=True)
    drift = Drift(variables={"persona": DriftVariable(chi2=9.0, p_value=0.001, loss_rate=0.5, flagged=True,
                                                      values=[value])},
                  flagged_values=1, flagged_variables=["persona"], loss_rate=0.5, max_loss_gap=1.0, max_shift=0.5,
                  tests=1, margin=0.1, alpha=0.01)
    return m.model_copy(update={"quality": m.quality.model_copy(update={"drift": drift})})


def test_user_text_with_pipes_newlines_and_backticks_stays_in_its_table_cell() -> None:
    hostile = spec(prompts={"template": {"text": f"{{{{ persona }}}} {HOSTILE}",
                                         "seeds": {"persona": [HOSTILE, "b"], "i": [1]}}},
                   filters={"deny": [HOSTILE]})
    text = card(_hostile_report(manifest("plain")), hostile)
    tables = _tables(text)
    for table in tables:
        assert all(len(row) == len(table[0]) for row in table), [[_cell_text(c) for c in r] for r in table]
    cells = [_cell_text(c) for table in tables for row in table for c in row]
    assert sum(c.startswith(FLAT[:30]) for c in cells) == 2  # the seed value and the drifted value, on one line


def test_user_text_renders_as_text_not_markup() -> None:
    hostile = spec(prompts={"template": {"text": f"{{{{ persona }}}} {HOSTILE}",
                                         "seeds": {"persona": [HOSTILE, "b"], "i": [1]}}},
                   filters={"deny": [HOSTILE]})
    html = MarkdownIt("commonmark").enable("table").render(card(_hostile_report(manifest("plain")), hostile))
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert escape(f"{{{{ persona }}}} {HOSTILE}", quote=False) in html  # the template, whole, in its code block


def test_the_card_shows_no_local_folder_the_manifest_does_not_record(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    local = spec(prompts={"file": {"uri": "/home/someone/private/prompts.jsonl"}},
                 model={"path": "/home/someone/models/tiny"}, mix={"uri": "s3://bucket/real.jsonl", "ratio": 0.5})
    text = card(manifest("plain"), local)
    assert "/home/someone" not in text and "s3cr3t" not in text
    assert "prompts.jsonl" in text and "tiny" in text and "s3://bucket/real.jsonl" in text


def test_finalize_writes_the_card_before_the_manifest() -> None:
    written: list[str] = []

    class Recording(MemoryStore):
        def put(self, key: str, data: bytes) -> None:
            written.append(key)
            super().put(key, data)

        def put_if_absent(self, key: str, data: bytes) -> bool:
            written.append(key)
            return super().put_if_absent(key, data)

    job = spec(output={"uri": "out", "rows_per_shard": 8})
    store, plan = Recording(), make_plan(job)
    m = finalize(store, job, plan, run_planted(store, job, plan), started_at=0.0)
    assert written.index(layout.CARD) < written.index(layout.MANIFEST)
    assert store.get(layout.CARD).decode() == card(m, job)
