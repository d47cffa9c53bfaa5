"""Seed datasets: a template variable whose value per row is a row of a JSONL or Parquet file, streamed.

`persona: {from_file: {uri: personas.parquet, columns: [name, age]}}` gives every job row one row of
the file (its named columns, as a mapping: `{{ persona.name }}`), drawn uniformly, without
replacement unless `replace: true`. The file is never held: planning reads its row counts by block
(Parquet row groups, or every `BLOCK_ROWS` lines of JSONL with the byte offset where each block
starts), and a shard reads only the blocks its rows come from.

How rows are drawn so that a shard reads few blocks: how many of the job's rows each block gives is
drawn first, by splitting the job's rows between the two halves of the blocks, recursively, with a
hypergeometric draw (without replacement; a binomial with it), each split seeded by its place in the
tree. That is exactly a uniform sample of the file's rows. Within a block, which rows it gives is a
seeded draw of that many rows. The job's rows then take the drawn file rows in file order, so a shard
of 256 rows reads the blocks that hold its 256 file rows: over the job, each block is read about once.
Everything is a pure function of the spec and the file's row counts: the same rows on any cluster,
shard size or resume (the file's fingerprint is checked, as for prompt files).

A further round of a targets job (orchestrator/plan/rounds.py) draws its rows the same way from
what earlier rounds left: each block's rows are one seeded permutation, round 0 takes its first
picks, round 1 the next, so without replacement no file row is drawn twice in the whole job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np

from orchestrator.errors import Problem, SpecError, StorageError
from orchestrator.plan.draws import stream_key
from orchestrator.spec.samplers import FromFile
from orchestrator.storage import split_uri

BLOCK_ROWS = 4096  # JSONL: rows per block (one byte offset kept per block)
READ_BATCH_ROWS = 65_536  # Parquet: rows of a row group read at a time
MAX_FILE_ROWS = 10**9 - 1  # numpy's hypergeometric draws need fewer rows than 10**9


@dataclass(frozen=True)
class SeedFile:
    """A seed file as the plan keeps it: its blocks' row counts (and JSONL byte offsets), and the rows each gives."""

    variable: str
    uri: str
    columns: tuple[str, ...]
    parquet: bool
    fingerprint: str
    block_rows: tuple[int, ...]
    block_offsets: tuple[int, ...]  # JSONL: where each block starts; empty for Parquet (row groups)
    picks: tuple[int, ...]  # job rows each block gives, in block order (they sum to the job's rows)
    round_picks: tuple[tuple[int, ...], ...] = ()  # the same for each further round of a targets job

    @property
    def rows(self) -> int:
        return sum(self.block_rows)

    def picks_of(self, round: int) -> tuple[int, ...]:
        return self.picks if round == 0 else self.round_picks[round - 1]

    def left(self) -> tuple[int, ...]:
        """Rows of each block no round has drawn yet."""
        used = np.sum([self.picks, *self.round_picks], axis=0)
        return tuple((np.asarray(self.block_rows) - used).tolist())


def _key(seed: int, variable: str, round: int = 0) -> int:
    return int(stream_key(seed, f"from_file.{variable}" + (f".round{round}" if round else "")))


def _rng(key: int, *place: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([key, *place])))


def block_picks(block_rows: tuple[int, ...], n: int, replace: bool, key: int) -> tuple[int, ...]:
    """How many of `n` uniform draws from the rows land in each block (hypergeometric splits, or binomial
    ones with replacement), the tree of splits seeded by each node's place."""
    prefix = np.concatenate([[0], np.cumsum(block_rows, dtype=np.int64)])
    picks, todo = [0] * len(block_rows), [(0, len(block_rows), n)]
    while todo:
        lo, hi, k = todo.pop()
        if k == 0 or hi - lo == 1:
            if hi - lo == 1:
                picks[lo] = k
            continue
        mid = (lo + hi) // 2
        left, right = int(prefix[mid] - prefix[lo]), int(prefix[hi] - prefix[mid])
        rng = _rng(key, lo, hi)
        if replace:
            k_left = int(rng.binomial(k, left / (left + right)))
        else:
            k_left = int(rng.hypergeometric(left, right, k)) if left and right else (k if left else 0)
        todo += [(lo, mid, k_left), (mid, hi, k - k_left)]
    return tuple(picks)


def positions(seed_file: SeedFile, replace: bool, key: int, block: int, round: int = 0) -> np.ndarray:
    """The rows of `block` (0-based within it) that round `round` takes, in file order."""
    size, k = seed_file.block_rows[block], seed_file.picks_of(round)[block]
    place = (len(seed_file.block_rows), block)  # apart from the splits' places (lo < hi there)
    if replace:
        return np.sort(_rng(key, *place, *((round,) if round else ())).integers(0, size, k))
    taken = sum(seed_file.picks_of(r)[block] for r in range(round))
    return np.sort(_rng(key, *place).permutation(size)[taken: taken + k])


def _jsonl_blocks(uri: str) -> tuple[tuple[int, ...], tuple[int, ...], dict[str, Any] | None]:
    """Rows per block, each block's byte offset, and the first row (to check its columns)."""
    from orchestrator.storage.reader import open_input

    rows, pos, counts, offsets, first = 0, 0, [], [], None
    with open_input(uri) as f:
        for line in f:
            if line.strip():
                if rows % BLOCK_ROWS == 0:
                    offsets.append(pos)
                    counts.append(0)
                if first is None:
                    first = _record(line, uri, 1)
                counts[-1] += 1
                rows += 1
            pos += len(line)
    return tuple(counts), tuple(offsets), first


def _record(line: bytes, uri: str, row: int) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError as e:
        raise SpecError([Problem("prompts.template.seeds", f"{uri}: seed row {row} is not JSON ({e})")]) from None
    if not isinstance(value, dict):
        raise SpecError([Problem("prompts.template.seeds", f"{uri}: seed row {row} is not a JSON object")])
    return value


def columns_problem(variable: str, sampler: FromFile, names: set[str]) -> Problem | None:
    """The columns `sampler` names that the file (its columns `names`) lacks, as one problem; None if none."""
    missing = [c for c in sampler.columns if c not in names]
    if not missing:
        return None
    return Problem(f"prompts.template.seeds.{variable}.from_file.columns",
                   f"{sampler.uri} has no column {', '.join(map(repr, missing))} "
                   f"(it has: {', '.join(sorted(names)) or 'none'}); name its columns")


def index_file(variable: str, sampler: FromFile, rows: int, seed: int) -> SeedFile:
    """Plan a seed file: read its blocks' row counts (and check its columns), then draw each block's share."""
    import pyarrow.parquet as pq

    from orchestrator.storage.reader import open_input

    field = f"prompts.template.seeds.{variable}.from_file"
    store, key = split_uri(sampler.uri)
    try:
        if store.size(key) is None:
            raise SpecError([Problem(f"{field}.uri", f"seed file {sampler.uri} does not exist")])
        fingerprint = store.fingerprint(key)
        parquet = sampler.uri.lower().endswith(".parquet")
        if parquet:
            with open_input(sampler.uri) as f:
                meta = pq.ParquetFile(f)
                names = set(meta.schema_arrow.names)
                counts = tuple(meta.metadata.row_group(i).num_rows for i in range(meta.num_row_groups))
            offsets: tuple[int, ...] = ()
        else:
            counts, offsets, first = _jsonl_blocks(sampler.uri)
            names = set(first or ())
    except StorageError as e:
        raise SpecError([Problem(f"{field}.uri", f"cannot read seed file {sampler.uri}: {e}")]) from None
    if problem := columns_problem(variable, sampler, names):
        raise SpecError([problem])
    total = sum(counts)
    if total == 0:
        raise SpecError([Problem(f"{field}.uri", f"seed file {sampler.uri} has no rows")])
    if total > MAX_FILE_ROWS:
        raise SpecError([Problem(f"{field}.uri", f"{sampler.uri} has {total} rows; at most {MAX_FILE_ROWS} "
                                                 "are drawn from")])
    if rows > total and not sampler.replace:
        raise SpecError([Problem(f"{field}.replace", f"rows: {rows} exceeds the {total} rows of {sampler.uri}; "
                                                     "lower rows, or set replace: true to draw rows more than once")])
    picks = block_picks(counts, rows, sampler.replace, _key(seed, variable))
    return SeedFile(variable, sampler.uri, tuple(sampler.columns), parquet, fingerprint, counts, offsets, picks)


def first_record(sampler: FromFile) -> dict[str, Any]:
    """The file's first row, its named columns (None each when it cannot be read: preflight says why)."""
    import pyarrow.parquet as pq

    from orchestrator.storage.reader import open_input

    try:
        with open_input(sampler.uri) as f:
            if sampler.uri.lower().endswith(".parquet"):
                file = pq.ParquetFile(f)
                names = [c for c in sampler.columns if c in file.schema_arrow.names]
                batch = next(file.iter_batches(batch_size=1, columns=names), None)
                record = batch.to_pylist()[0] if batch is not None and batch.num_rows else {}
            else:
                line = next((line for line in f if line.strip()), b"{}")
                record = json.loads(line)
    except (StorageError, OSError, ValueError):
        record = {}
    if not isinstance(record, dict):
        record = {}
    return {c: record.get(c) for c in sampler.columns}


def _picked(seed_file: SeedFile, block: int, wanted: np.ndarray) -> Iterator[dict[str, Any] | bytes]:
    """The block's rows at `wanted` (sorted positions within it, repeats allowed): Parquet records of the
    named columns, read a batch at a time (a row group of millions of rows is never whole in memory), or
    JSONL lines, undecoded."""
    from orchestrator.storage.reader import open_input

    if seed_file.parquet:
        import pyarrow.parquet as pq

        with open_input(seed_file.uri) as f:
            first = 0
            for batch in pq.ParquetFile(f).iter_batches(batch_size=READ_BATCH_ROWS, row_groups=[block],
                                                        columns=list(seed_file.columns)):
                lo, hi = np.searchsorted(wanted, [first, first + batch.num_rows])
                if hi > lo:
                    yield from batch.take(wanted[lo:hi] - first).to_pylist()
                first += batch.num_rows
        return
    todo = wanted.tolist()
    with open_input(seed_file.uri, seed_file.block_offsets[block]) as f:
        rows = (line for line in f if line.strip())
        at = 0
        for position, line in enumerate(islice(rows, todo[-1] + 1 if todo else 0)):
            while at < len(todo) and todo[at] == position:
                yield line
                at += 1


def with_round(seed_file: SeedFile, replace: bool, seed: int, rows: int) -> SeedFile:
    """The seed file with a further round's draw of `rows` rows (from the rows left, without replacement)."""
    round = len(seed_file.round_picks) + 1
    split_key = _key(seed, seed_file.variable, round)
    picks = block_picks(seed_file.block_rows if replace else seed_file.left(), rows, replace, split_key)
    return SeedFile(**{**seed_file.__dict__, "round_picks": (*seed_file.round_picks, picks)})


def file_values(seed_file: SeedFile, replace: bool, seed: int, start: int, end: int,
                round: int = 0) -> list[dict[str, Any]]:
    """Round `round`'s rows [start, end)'s values of the seed file's variable (reading only the blocks
    they come from)."""
    key = _key(seed, seed_file.variable)
    bounds = np.concatenate([[0], np.cumsum(seed_file.picks_of(round), dtype=np.int64)])
    file_rows = np.concatenate([[0], np.cumsum(seed_file.block_rows, dtype=np.int64)]).tolist()
    out: list[dict[str, Any]] = []
    first = int(np.searchsorted(bounds, start, side="right")) - 1
    for block in range(first, len(seed_file.picks)):
        lo, hi = int(bounds[block]), int(bounds[block + 1])
        if lo >= end:
            break
        if hi <= start:
            continue
        wanted = positions(seed_file, replace, key, block, round)[max(start, lo) - lo: min(end, hi) - lo]
        for position, row in zip(wanted.tolist(), _picked(seed_file, block, wanted), strict=True):
            record = row if isinstance(row, dict) else _record(row, seed_file.uri, file_rows[block] + position + 1)
            out.append({c: record.get(c) for c in seed_file.columns})
    return out
