"""What the report shows of the rows, on a job whose every row's fate is planted.

30 rows (persona a/b/c x i 0..9) run through the real shard path (filters, judge, commit) on a scripted
engine, then the real finalize pass (dedup, report). Planted: the judge scores row i with i + 1 (so i
0..3 fall below min_score 5), b's row 9 says a denied word, c's rows 6, 7 and 8 write the same text
(two exact duplicates of the first), and persona a's replies are cut at max_tokens. Every expected
figure below is counted from these rules by hand, not by the code under test. The first shard's 8
rows (i 0..2) are all rejected: the dedup pass must handle a shard with no row to keep.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from orchestrator.commit.shards import ShardStats
from orchestrator.finalize.finish import finalize
from orchestrator.finalize.quality_report import QualityReport
from orchestrator.plan.planner import Plan, make_plan, template_variables
from orchestrator.spec.job import JobSpec
from orchestrator.storage import MemoryStore, Store
from tests.unit.specs import make_spec
from workers.engine import Completion, EngineInfo
from workers.fake_engine import FakeEngine
from workers.prompts import PromptRow, RowFailure
from workers.shard import run_shard

PERSONAS, NUMBERS = ["a", "b", "c"], list(range(10))


def planted_text(persona: str, i: int) -> str:
    if persona == "c" and i in (6, 7, 8):
        return "the same answer written three times by persona c"
    word = "forbidden" if (persona, i) == ("b", 9) else "fine"
    return f"answer {i} of persona {persona}, a {word} reply " + "x" * (10 * i)


def planted(spec: JobSpec) -> FakeEngine:
    """An engine answering a prompt "persona i" with its planted text, and judging row i with score i + 1."""
    source = spec.prompts.template
    assert source is not None

    def reply(row: PromptRow, follow_up: str | None) -> list[Completion] | RowFailure:
        v = template_variables(source, int(row.row_id.split("-")[1]))
        if "-judge" in row.row_id:
            return [Completion(json.dumps({"reason": f"planted for {v['persona']} {v['i']}", "score": v["i"] + 1}),
                               "stop", 50, 12)]
        finish = "length" if v["persona"] == "a" else "stop"
        return [Completion(planted_text(v["persona"], v["i"]), finish, 5, 20)]

    return FakeEngine(reply, EngineInfo(model="scripted", revision="r", load_seconds=0.0, max_model_len=4096))


def run_planted(store: Store, spec: JobSpec, plan: Plan) -> dict[int, ShardStats]:
    """Every shard of the job through the real shard path on the planted engine; each shard's stats."""
    engine = planted(spec)
    known = {}
    for shard in plan.shards():
        outcome = asyncio.run(run_shard(engine, store, spec, plan, shard, attempt=1))
        assert outcome is not None
        known[shard.index] = outcome.stats
    return known


SPEC = make_spec(prompts={"template": {"text": "{{ persona }} {{ i }}", "seeds": {"persona": PERSONAS, "i": NUMBERS}}},
                 output={"uri": "out", "rows_per_shard": 8}, judge={"min_score": 5, "levels": {s: f"level {s}" for s in range(1, 11)}},
                 filters={"deny": ["forbidden"]}, dedup={"exact": True, "near_threshold": None})


@pytest.fixture(scope="module")
def job() -> tuple[QualityReport, Plan]:
    spec = SPEC
    store, plan = MemoryStore(), make_plan(spec)
    return finalize(store, spec, plan, run_planted(store, spec, plan), started_at=0.0).quality, plan


def _who(example: dict[str, Any], plan: Plan) -> tuple[str, int]:
    """(persona, i) of an example's row, from the row index its id ends in."""
    assert SPEC.prompts.template is not None
    v = template_variables(SPEC.prompts.template, int(example["row_id"].split("/")[0].rsplit("-", 1)[1]))
    return v["persona"], v["i"]


def test_the_best_rows_are_the_highest_scored_kept_rows(job: tuple[QualityReport, Plan]) -> None:
    quality, plan = job
    best = quality.examples.best
    # kept scores: a 5..10, b 5..9 (b9 filtered), c 5,6,7,10 (c7 and c8 are duplicates of c6)
    assert [e["score"] for e in best] == [10, 10, 9, 9, 8]
    assert {_who(e, plan) for e in best[:2]} == {("a", 9), ("c", 9)}
    assert {_who(e, plan) for e in best[2:4]} == {("a", 8), ("b", 8)}
    assert all(e["reason"] == "planted for {} {}".format(*_who(e, plan)) for e in best)


def test_the_worst_rows_are_the_lowest_scored_of_all_judged_rows(job: tuple[QualityReport, Plan]) -> None:
    quality, plan = job
    worst = quality.examples.worst
    assert [e["score"] for e in worst] == [1, 1, 1, 2, 2]
    assert {_who(e, plan) for e in worst[:3]} == {("a", 0), ("b", 0), ("c", 0)}


def test_rejected_samples_carry_their_reason_and_detail(job: tuple[QualityReport, Plan]) -> None:
    quality, plan = job
    rejected = quality.examples.rejected
    assert set(rejected) == {"judge_low_score", "deny_pattern"}
    [denied] = rejected["deny_pattern"]
    assert _who(denied, plan) == ("b", 9) and denied["completion"] == planted_text("b", 9)
    assert "filters.deny[0]" in denied["detail"]
    assert len(rejected["judge_low_score"]) == 3  # REPORT_REJECTED_EXAMPLES of the 12
    assert all(_who(e, plan)[1] <= 3 for e in rejected["judge_low_score"])


def test_duplicate_pairs_show_the_original_text_beside_the_duplicate(job: tuple[QualityReport, Plan]) -> None:
    quality, plan = job
    pairs = quality.examples.duplicates
    assert sorted(_who(p, plan) for p in pairs) == [("c", 7), ("c", 8)]
    for p in pairs:
        assert p["reason"] == "exact_duplicate"
        assert p["original"] == p["completion"] == planted_text("c", 6)
        assert _who({"row_id": p["original_id"]}, plan) == ("c", 6)


def test_the_per_value_table_counts_kept_rejected_scores_and_lengths(job: tuple[QualityReport, Plan]) -> None:
    quality, _ = job
    table = {r["value"]: r for r in quality.examples.values["persona"]}
    kept = {"a": range(4, 10), "b": range(4, 9), "c": (4, 5, 6, 9)}
    rejected = {"a": 4, "b": 5, "c": 6}  # judge 4 each; b9 filtered; c7, c8 duplicates
    judged = {"a": range(10), "b": range(9), "c": range(10)}  # b9 was filtered before the judge
    for p in PERSONAS:
        row = table[p]
        assert (row["kept"], row["rejected"]) == (len(kept[p]), rejected[p])
        assert row["rejection_rate"] == pytest.approx(rejected[p] / 10)
        assert row["judge_mean"] == pytest.approx(sum(i + 1 for i in judged[p]) / len(judged[p]))
        assert row["mean_chars"] == pytest.approx(sum(len(planted_text(p, i)) for i in kept[p]) / len(kept[p]))
        assert row["mean_tokens"] == 20


def test_finish_reasons_and_a_loud_truncation_flag(job: tuple[QualityReport, Plan]) -> None:
    quality, _ = job
    # generated rows (kept or rejected; all 30 were generated): persona a's 10 were cut at max_tokens
    assert quality.finish_reasons == {"stop": 20, "length": 10}
    assert quality.truncation.rows == 10 and quality.truncation.flagged
    assert quality.truncation.share == pytest.approx(1 / 3)


def test_the_header_names_what_ran_and_what_it_cost(job: tuple[QualityReport, Plan]) -> None:
    quality, plan = job
    about = quality.about
    assert about.model == SPEC.model.name and about.name == SPEC.name
    assert about.spec_hash == plan.spec_hash and about.sampling["max_tokens"] > 0
    assert about.tokens["completion_tokens"] == 30 * 20  # every generated row wrote 20 tokens
    assert about.tokens["judge_prompt_tokens"] == 29 * 50  # every row but the filtered one was judged
    assert about.finished_at.endswith("+00:00")


def test_the_run_summary_warns_of_the_cut_rows(job: tuple[QualityReport, Plan],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from orchestrator.cli import local

    local.print_quality(job[0])
    assert "10 rows (33%) stopped at max_tokens = " in " ".join(capsys.readouterr().err.split())
