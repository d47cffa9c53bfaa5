"""Metric declarations follow Prometheus conventions and finished jobs' series expire."""

from __future__ import annotations

from prometheus_client import generate_latest

from orchestrator.service.metrics import Metrics


def _exposition(m: Metrics) -> str:
    return generate_latest(m.registry).decode()


def test_every_metric_is_prefixed_and_counters_end_in_total() -> None:
    m = Metrics()
    m.generated_tokens.labels("job-a", "tiny", "").inc(5)
    m.rows.labels("job-a", "ok").inc(2)
    for family in m.registry.collect():
        assert family.name.startswith("synthfleet_")
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith("_total")
    assert "_created" not in _exposition(m)


def test_series_of_a_finished_job_are_dropped_after_the_retention_time() -> None:
    m = Metrics(retention_s=0.0)
    for job in ("old", "live"):
        m.generated_tokens.labels(job, "tiny", "").inc(3)
        m.job_progress.labels(job).set(0.5)
    m.job_finished("old")
    m.expire()
    text = _exposition(m)
    assert 'job="old"' not in text and 'job="live"' in text


def test_series_of_a_recently_finished_job_are_kept() -> None:
    m = Metrics(retention_s=3600.0)
    m.rows.labels("done", "ok").inc()
    m.job_finished("done")
    m.expire()
    assert 'job="done"' in _exposition(m)


def test_a_job_that_did_not_complete_loses_its_progress_and_eta_at_once() -> None:
    m = Metrics(retention_s=3600.0)
    for job in ("cancelled", "completed"):
        m.job_progress.labels(job).set(0.4)
        m.job_eta.labels(job).set(30)
    m.job_finished("cancelled", completed=False)
    m.job_finished("completed")
    text = _exposition(m)
    assert 'job_progress_ratio{job="cancelled"}' not in text and 'job_eta_seconds{job="cancelled"}' not in text
    assert 'job_progress_ratio{job="completed"}' in text


def test_token_counters_carry_the_stage_of_a_job_with_stages_and_no_stage_without() -> None:
    from orchestrator.service.tracking import RecordKeeper
    from workers.shard import WorkerCounts

    m = Metrics()
    counts = {"plain": {"completion_tokens": 7, "prompt_tokens": 3},
              "staged": {"completion_tokens": 9, "prompt_tokens": 4, "completion_tokens/question": 5,
                         "completion_tokens/answer": 4, "prompt_tokens/question": 1, "prompt_tokens/answer": 3,
                         "completion_tokens/score": 2, "prompt_tokens/score": 6}}
    RecordKeeper(None, m).count_tokens(WorkerCounts(counts, {}), {})  # type: ignore[arg-type]
    value = m.registry.get_sample_value
    assert value("synthfleet_generated_tokens_total", {"job": "plain", "model": "unknown", "stage": ""}) == 7
    assert {s: value("synthfleet_generated_tokens_total", {"job": "staged", "model": "unknown", "stage": s})
            for s in ("question", "answer", "score", "")} == {"question": 5, "answer": 4, "score": 2, "": None}
    assert value("synthfleet_prompt_tokens_total", {"job": "staged", "model": "unknown", "stage": "score"}) == 6
