"""Real-data mixing: exact counts, an even spread, lineage kept."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator import layout, rows
from orchestrator.commit import parquet_bytes
from orchestrator.gates import Mix
from orchestrator.mixing import is_real, mix_counts, write_mixed
from orchestrator.storage import MemoryStore
from tests.unit.specs import make_spec


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


def _synthetic_shard(rows_n: int = 30) -> MemoryStore:
    """A store holding one committed data shard of `rows_n` synthetic rows."""
    store = MemoryStore()
    data = [{"row_id": f"s{i}", "sample_index": 0, "prompt": f"p{i}", "completion": f"synthetic {i}",
             "lineage": LINEAGE, "word": "a"} for i in range(rows_n)]
    store.put(layout.data_key(0, 1), parquet_bytes(pa.Table.from_pylist(data, schema=rows.data_schema(make_spec()))))
    return store


def test_write_mixed_interleaves_real_and_synthetic_rows_with_a_source_column(tmp_path: Path) -> None:
    store, lineage = _synthetic_shard(), LINEAGE
    real = tmp_path / "real.jsonl"
    real.write_text("".join(json.dumps({"text": f"real {i}"}) + "\n" for i in range(20)))
    out = write_mixed(store, Mix(uri=str(real), ratio=0.25), [layout.data_key(0, 1)], kept=30, rows_per_part=16)
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
    out = write_mixed(store, Mix(uri=str(real), ratio=0.25), [layout.data_key(0, 1)], kept=30, rows_per_part=64)
    assert (out["real_rows"], out["synthetic_rows"]) == (9, 27)  # the 9 good lines, synthetic cut to the ratio
    assert out["skipped_lines"] == 3
    assert [s.split(":")[0] for s in out["skipped_sample"]] == ["line 8", "line 10", "line 11"]
    assert "not valid UTF-8" in out["skipped_sample"][1] and "not a JSON object" in out["skipped_sample"][2]
    table = pq.read_table(io.BytesIO(store.get(out["parts"][0])))
    real_ids = [r["row_id"] for r in table.to_pylist() if r["source"] == "real"]
    assert real_ids == [f"real-{i}" for i in (0, 1, 2, 3, 4, 5, 6, 8, 11)]  # numbers of the file's records
