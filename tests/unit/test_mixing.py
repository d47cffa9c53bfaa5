"""Real-data mixing: exact counts, an even spread, lineage kept."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator import defaults
from orchestrator.commit import layout, schemas
from orchestrator.commit.shards import parquet_bytes
from orchestrator.finalize.diversity import sample_key
from orchestrator.finalize.drift import bias_drift
from orchestrator.finalize.mixing import is_real, mix_counts, write_mixed
from orchestrator.finalize.samples import sample_keys
from orchestrator.spec.quality import Mix
from orchestrator.storage import MemoryStore
from tests.unit.specs import template_spec


@pytest.mark.parametrize(("synthetic", "available", "ratio", "expected"), [
    (900, 1000, 0.1, (900, 100)),  # enough real rows: all synthetic rows are used
    (300, 1000, 0.5, (300, 300)),
    (900, 50, 0.1, (450, 50)),  # too few real rows: synthetic rows are cut to keep the ratio
    (10, 0, 0.5, (0, 0)),
])
def test_mix_counts_hit_the_ratio_exactly(synthetic: int, available: int, ratio: float,
                                          expected: tuple[int, int]) -> None:
    n_synth, n_real = mix_counts(synthetic, available, ratio)
    assert (n_synth, n_real) == expected
    if n_real:
        assert n_real / (n_real + n_synth) == ratio


def test_real_rows_are_spread_evenly_over_the_split() -> None:
    total, real = 1000, 250
    flags = [is_real(i, total, real) for i in range(total)]
    assert sum(flags) == real
    for prefix in range(100, total + 1, 100):  # every prefix holds the ratio to within one row
        assert abs(sum(flags[:prefix]) - prefix * 0.25) <= 1


LINEAGE = {"spec_hash": "h", "model": "m", "model_revision": "r", "template_hash": "t", "seed": 1, "sampling": "{}"}


def _synthetic_shards(groups: list[str], shards: int = 1) -> MemoryStore:
    """A store holding committed data shards of synthetic rows, row i of seed value `groups[i]`, in order."""
    store, schema = MemoryStore(), schemas.data_schema(template_spec({"word": sorted(set(groups))}))
    data = [{"row_id": f"s{i}", "sample_index": 0, "prompt": f"p{i}", "completion": f"synthetic {i}",
             "lineage": LINEAGE, "word": g} for i, g in enumerate(groups)]
    size = -(-len(data) // shards)
    for k in range(shards):
        table = pa.Table.from_pylist(data[k * size:(k + 1) * size], schema=schema)
        store.put(layout.data_key(k, shards), parquet_bytes(table))
    return store


def _keys(store: MemoryStore, data_keys: list[str]) -> np.ndarray:
    """The kept rows' sample keys in shard order, as the finalize pass collects them."""
    tables = [pq.read_table(io.BytesIO(store.get(k))) for k in data_keys]
    return np.concatenate([sample_keys(t) for t in tables]) if tables else np.zeros(0, dtype=np.uint64)


def _synthetic_shard(rows_n: int = 30) -> MemoryStore:
    return _synthetic_shards(["a"] * rows_n)


def test_write_mixed_interleaves_real_and_synthetic_rows_with_a_source_column(tmp_path: Path) -> None:
    store, lineage = _synthetic_shard(), LINEAGE
    real = tmp_path / "real.jsonl"
    real.write_text("".join(json.dumps({"text": f"real {i}"}) + "\n" for i in range(20)))
    out, _ = write_mixed(store, Mix(uri=str(real), ratio=0.25), [layout.data_key(0, 1)], _keys(store, [layout.data_key(0, 1)]), rows_per_part=16)
    assert (out["synthetic_rows"], out["real_rows"], out["rows"]) == (30, 10, 40)
    assert len(out["parts"]) == 3 and out["parts"][0] == layout.mixed_key(0, 3)
    table = pa.concat_tables(pq.read_table(io.BytesIO(store.get(k))) for k in out["parts"])
    got = table.to_pylist()
    assert [r["source"] for r in got].count("real") == 10
    assert [r["completion"] for r in got if r["source"] == "synthetic"] == [f"synthetic {i}" for i in range(30)]
    assert [r["row_id"] for r in got if r["source"] == "real"] == [f"real-{i}" for i in range(10)]
    assert all(r["lineage"] == lineage for r in got if r["source"] == "synthetic")
    assert all(r["lineage"] is None for r in got if r["source"] == "real")


def test_bad_lines_past_the_ones_validate_reads_are_passed_over_and_counted(tmp_path: Path) -> None:
    store = _synthetic_shard()
    lines = [json.dumps({"text": f"real {i}"}).encode() for i in range(12)]
    lines[7], lines[9], lines[10] = b'{"text": "cut', b'{"text": "caf\xe9"}', b'["a list"]'  # lines 8, 10, 11
    real = tmp_path / "real.jsonl"
    real.write_bytes(b"\n".join(lines) + b"\n")
    out, _ = write_mixed(store, Mix(uri=str(real), ratio=0.25), [layout.data_key(0, 1)], _keys(store, [layout.data_key(0, 1)]), rows_per_part=64)
    assert (out["real_rows"], out["synthetic_rows"]) == (9, 27)  # the 9 good lines, synthetic cut to the ratio
    assert out["skipped_lines"] == 3
    assert [s.split(":")[0] for s in out["skipped_sample"]] == ["line 8", "line 10", "line 11"]
    assert "not valid UTF-8" in out["skipped_sample"][1] and "not a JSON object" in out["skipped_sample"][2]
    table = pq.read_table(io.BytesIO(store.get(out["parts"][0])))
    real_ids = [r["row_id"] for r in table.to_pylist() if r["source"] == "real"]
    assert real_ids == [f"real-{i}" for i in (0, 1, 2, 3, 4, 5, 6, 8, 11)]  # numbers of the file's records


def _real_file(tmp_path: Path, n: int) -> Path:
    real = tmp_path / "real.jsonl"
    real.write_text("".join(json.dumps({"text": f"real {i}"}) + "\n" for i in range(n)))
    return real


def test_a_short_real_file_mixes_in_a_uniform_sample_of_the_kept_rows_not_the_first_shards(tmp_path: Path) -> None:
    """5,000 kept rows in product order (a, then b, c, d); 250 real rows at ratio 0.2 take 1,000 synthetic rows."""
    groups = [g for g in "abcd" for _ in range(1250)]
    store = _synthetic_shards(groups, shards=4)
    keys = [layout.data_key(k, 4) for k in range(4)]
    out, seeds = write_mixed(store, Mix(uri=str(_real_file(tmp_path, 250)), ratio=0.2), keys, _keys(store, keys),
                             rows_per_part=4096, variables=["word"])
    assert (out["synthetic_rows"], out["real_rows"]) == (1000, 250)
    got = pq.read_table(io.BytesIO(store.get(out["parts"][0]))).to_pylist()
    used = [r["row_id"] for r in got if r["source"] == "synthetic"]
    truth = sorted((sample_key(f"s{i}/0"), i) for i in range(5000))[:1000]  # the 1,000 smallest id hashes
    assert used == [f"s{i}/0" for i in sorted(i for _, i in truth)]  # exactly those, in shard order
    counts = Counter(groups[i] for _, i in truth)
    assert seeds["word"] == counts and sum(counts.values()) == 1000
    assert all(200 <= counts[g] <= 300 for g in "abcd")  # 250 each expected (the old code: a 1,000, the rest 0)
    planned = {"word": Counter(groups)}
    assert bias_drift(planned, seeds, defaults.DRIFT_MARGIN, defaults.DRIFT_ALPHA)["flagged_variables"] == []
    first_rows = {"word": Counter(groups[:1000])}  # what the old code mixed in: the mixing drift test flags it
    assert bias_drift(planned, first_rows, defaults.DRIFT_MARGIN, defaults.DRIFT_ALPHA)["flagged_variables"] == ["word"]


@pytest.mark.parametrize(("real_rows", "kept", "why"), [(0, 30, "no real text records"), (20, 0, "no kept synthetic")])
def test_nothing_to_mix_writes_no_part_and_the_manifest_lists_none(tmp_path: Path, real_rows: int, kept: int,
                                                                   why: str) -> None:
    store = _synthetic_shard() if kept else MemoryStore()
    data_keys = [layout.data_key(0, 1)] if kept else []
    out, _ = write_mixed(store, Mix(uri=str(_real_file(tmp_path, real_rows)), ratio=0.25), data_keys,
                         _keys(store, data_keys), rows_per_part=16)
    assert out["parts"] == [] and out["rows"] == 0 and why in out["empty"]
    assert not any(k.startswith(layout.MIXED_DIR) for k in store.list(""))
