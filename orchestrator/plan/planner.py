"""Plan: turn a spec into shards of fixed row ranges, streamed, identical for identical specs.

Row ids, shard boundaries and per-row seeds are pure functions of the spec (and, for prompt
files, of the file's bytes), so a re-run or a resumed job reproduces the same plan. Nothing here
holds rows: a 10-million-row seed expansion costs a few integers, a JSONL file one offset per shard.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from orchestrator.errors import Problem, SpecError, StorageError
from orchestrator.plan import draws
from orchestrator.plan.seed_files import SeedFile, file_values, index_file
from orchestrator.spec.job import JobSpec, TemplateSource
from orchestrator.spec.targets import budget, strata
from orchestrator.storage import split_uri


@dataclass(frozen=True)
class Shard:
    """Rows [start, end) of the job; for JSONL sources also their bytes [byte_start, byte_end).

    `first_line` is the 1-based file line number at `byte_start` (blank lines count), so a row's
    errors can name its line in the file. A shard of a later round of a targets job holds the rows
    `indexes` its round selected (orchestrator/plan/rounds.py), the `offset`-th onwards of that round.
    """

    index: int
    start: int
    end: int
    byte_start: int | None = None
    byte_end: int | None = None
    first_line: int | None = None
    indexes: tuple[int, ...] | None = None
    round: int = 0
    offset: int | None = None  # its first row's place among its round's rows (round 0: start)

    @property
    def rows(self) -> int:
        return self.end - self.start if self.indexes is None else len(self.indexes)

    def row_indexes(self) -> np.ndarray:
        if self.indexes is None:
            return np.arange(self.start, self.end, dtype=np.int64)
        return np.asarray(self.indexes, dtype=np.int64)

    @property
    def first(self) -> int:
        """Its first row's place among its round's rows (what seed-file draws are indexed by)."""
        return self.start if self.offset is None else self.offset


@dataclass(frozen=True, eq=False)
class Round:
    """A further round of a targets job: the rows it selected from the sequence [start, end), in order."""

    number: int
    start: int
    end: int
    indexes: np.ndarray  # int64, ascending


@dataclass(frozen=True)
class Plan:
    job_id: str
    spec_hash: str
    total_rows: int
    rows_per_shard: int
    source_fingerprint: str | None = None
    line_offsets: tuple[int, ...] | None = None  # JSONL: byte offset of every shard's first line
    first_lines: tuple[int, ...] | None = None  # JSONL: 1-based file line number at each offset
    seed_files: tuple[SeedFile, ...] = ()  # the template's `from_file` variables (orchestrator/plan/seed_files.py)
    rounds: tuple[Round, ...] = ()  # a targets job's further rounds so far
    of_shards: int | None = None  # a targets job: the N of its files' "-of-N" names, its budget of shards

    @property
    def first_shards(self) -> int:
        """Shards of the first pass, rows [0, total_rows): none when a targets job's rounds plan every row."""
        if self.total_rows == 0 and self.of_shards is not None:
            return 0
        return max(1, math.ceil(self.total_rows / self.rows_per_shard))

    @property
    def rounds_done(self) -> int:
        """Rounds planned, the first pass included."""
        return len(self.rounds) + (self.first_shards > 0)

    @property
    def num_shards(self) -> int:
        return self.first_shards + sum(math.ceil(len(r.indexes) / self.rows_per_shard) for r in self.rounds)

    @property
    def of(self) -> int:
        """The N of the shard files' "-of-N" names: the shard count, or a targets job's budget of shards."""
        return self.of_shards or self.num_shards

    @property
    def rows(self) -> int:
        """Rows over every round (`total_rows`: the first pass)."""
        return self.total_rows + sum(len(r.indexes) for r in self.rounds)

    @property
    def next_index(self) -> int:
        """Where a further round's rows begin in the row sequence."""
        return self.rounds[-1].end if self.rounds else self.total_rows

    def shard(self, index: int) -> Shard:
        if index >= self.first_shards and self.of_shards is not None:
            return self._round_shard(index)
        start = index * self.rows_per_shard
        end = min(start + self.rows_per_shard, self.total_rows)
        if self.line_offsets is None:
            return Shard(index, start, end)
        first_line = None if self.first_lines is None else self.first_lines[index]
        return Shard(index, start, end, self.line_offsets[index], self.line_offsets[index + 1], first_line)

    def _round_shard(self, index: int) -> Shard:
        first, per = self.first_shards, self.rows_per_shard
        for r in self.rounds:
            count = math.ceil(len(r.indexes) / per)
            if index < first + count:
                offset = (index - first) * per
                picked = r.indexes[offset: offset + per]
                return Shard(index, int(picked[0]), int(picked[-1]) + 1, indexes=tuple(picked.tolist()),
                             round=r.number, offset=offset)
            first += count
        raise IndexError(f"shard {index} is beyond the plan's {self.num_shards}")

    def shards(self) -> Iterator[Shard]:
        for i in range(self.num_shards):
            yield self.shard(i)

    def shard_of(self, row: int) -> int:
        """The shard holding row `row` of the sequence (a row of the plan)."""
        if row < self.total_rows:
            return row // self.rows_per_shard
        first = self.first_shards
        for r in self.rounds:
            at = int(np.searchsorted(r.indexes, row))
            if at < len(r.indexes) and r.indexes[at] == row:
                return first + at // self.rows_per_shard
            first += math.ceil(len(r.indexes) / self.rows_per_shard)
        raise KeyError(f"row {row} is in no shard of the plan")


def row_id(spec_hash: str, index: int) -> str:
    return f"{spec_hash[:10]}-{index:010d}"


def sample_id(row_id: str, sample_index: int) -> str:
    """A completion's id: its row's id and its index among the row's `n` samples."""
    return f"{row_id}/{sample_index}"


def row_seed(base_seed: int, index: int) -> int:
    """Per-row sampling seed: independent of batching, worker and attempt."""
    digest = hashlib.blake2b(f"{base_seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _sample_map(source: TemplateSource) -> tuple[int, int, int]:
    """An affine permutation i -> (a*i + b) mod P of the product: N distinct rows, O(1) memory."""
    size = source.product_size()
    assert source.sample is not None
    h = hashlib.sha256(f"sample:{source.sample.seed}".encode()).digest()
    a = int.from_bytes(h[:8], "big") % size or 1
    while math.gcd(a, size) != 1:
        a = (a + 1) % size or 1
    return a, int.from_bytes(h[8:16], "big") % size, size


def template_variables(source: TemplateSource, index: int, files: tuple[SeedFile, ...] = ()) -> dict[str, object]:
    """The seed values of row `index`: a mixed-radix digit of the (possibly sampled) product, or, with
    samplers, the row's draws (see draws.py) and seed-file rows (`files`, the plan's)."""
    if source.sampled():
        return shard_variables(source, Shard(0, index, index + 1), files)[0]
    combo = index
    if source.sample is not None:
        a, b, size = _sample_map(source)
        combo = (a * index + b) % size
    values: dict[str, object] = {}
    listed = source.listed()
    for name in sorted(listed, reverse=True):
        options = listed[name]
        combo, digit = divmod(combo, len(options))
        values[name] = options[digit]
    return values


def shard_variables(source: TemplateSource, shard: Shard, files: tuple[SeedFile, ...] = ()) -> list[dict[str, object]]:
    """`template_variables` of a shard's rows: its samplers drawn at once, its seed-file rows read by block."""
    if source.sampled():
        values = draws.index_values(source, shard.row_indexes())
        for f in files:
            from_file = source.seeds[f.variable].from_file  # type: ignore[union-attr]
            assert from_file is not None
            drawn = file_values(f, from_file.replace, source.seed or 0, shard.first, shard.first + shard.rows,
                                shard.round)
            for row, value in zip(values, drawn, strict=True):
                row[f.variable] = value
        return values  # type: ignore[return-value]
    return [template_variables(source, i) for i in shard.row_indexes().tolist()]


@dataclass(frozen=True)
class _JsonlScan:
    """What one pass over a JSONL file finds: its rows, where shards begin (bytes and file lines)."""

    rows: int
    offsets: tuple[int, ...]
    first_lines: tuple[int, ...]
    fingerprint: str


def _scan_jsonl(uri: str, rows_per_shard: int) -> _JsonlScan:
    """Count non-blank lines, recording the byte offset and line number where each shard starts.

    Bytes only, never decoded: a line that is not valid UTF-8 is still one row here, and becomes
    that row's error when its shard is read.
    """
    from orchestrator.storage.reader import open_input

    store, key = split_uri(uri)
    if store.size(key) is None:
        raise SpecError([Problem("prompts", f"input file {uri} does not exist")])
    offsets, first_lines, rows, lines, pos = [0], [1], 0, 0, 0
    with open_input(uri) as f:
        for line in f:
            pos, lines = pos + len(line), lines + 1
            if line.strip():
                rows += 1
                if rows % rows_per_shard == 0:
                    offsets.append(pos)
                    first_lines.append(lines + 1)
    if rows % rows_per_shard or rows == 0:
        offsets.append(pos)
        first_lines.append(lines + 1)
    return _JsonlScan(rows, tuple(offsets), tuple(first_lines), store.fingerprint(key))


def _parquet_rows(uri: str) -> tuple[int, str]:
    import pyarrow.parquet as pq

    from orchestrator.storage.reader import open_input

    store, key = split_uri(uri)
    with open_input(uri) as f:
        return pq.ParquetFile(f).metadata.num_rows, store.fingerprint(key)


def shard_budget(spec: JobSpec) -> int:
    """The most shards a targets job can have (its files' "-of-N"): its row budget's, and a part-filled
    shard per round."""
    source, targets = spec.prompts.template, spec.targets
    assert source is not None and targets is not None
    targeted = sum(s.target for s in strata(targets, source.listed(), source.sampled()))
    return math.ceil(budget(targets, source.rows or 0, targeted) / spec.output.rows_per_shard) + targets.max_rounds


def make_plan(spec: JobSpec) -> Plan:
    """The plan for `spec`; reads at most the input file's bytes once, never holds its rows."""
    spec_hash, per_shard = spec.content_hash(), spec.output.rows_per_shard
    p = spec.prompts
    if p.template is not None:
        first = p.template.total_rows if spec.targets is None else p.template.rows or 0  # targets: rounds add rows
        files = tuple(index_file(name, s.from_file, first, p.template.seed or 0)
                      for name, s in sorted(p.template.sampled().items()) if s.from_file is not None)
        fingerprint = json.dumps({f.uri: f.fingerprint for f in files}, sort_keys=True) if files else None
        return Plan(spec.job_id, spec_hash, first, per_shard, fingerprint, seed_files=files,
                    of_shards=shard_budget(spec) if spec.targets is not None else None)
    uri = str(p.file_uri)
    try:
        if uri.lower().endswith(".parquet"):
            total, fingerprint = _parquet_rows(uri)
            return Plan(spec.job_id, spec_hash, total, per_shard, fingerprint)
        scan = _scan_jsonl(uri, per_shard)
    except StorageError as e:
        raise SpecError([Problem("prompts", f"cannot read input file {uri}: {e}")]) from None
    return Plan(spec.job_id, spec_hash, scan.rows, per_shard, scan.fingerprint, scan.offsets, scan.first_lines)
