"""Further rounds of a targets job: which new rows to generate for the strata still short of their target.

The job's rows are one endless sequence (row i: its draws, seed and id, orchestrator/plan/draws.py).
The first pass is rows [0, rows). Each further round continues the sequence where the last one
stopped and selects, in order, the rows whose stratum still needs rows, up to each stratum's quota:
its missing kept rows over its measured acceptance rate. Rows passed over are never generated, so
no round regenerates a row, and a round is a pure function of the spec and the counts of the rounds
before it, read from their committed shards (orchestrator/run/rounds.py): a resumed job plans the
same rounds again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from orchestrator.plan import draws
from orchestrator.plan.planner import Plan, Round
from orchestrator.plan.seed_files import with_round
from orchestrator.spec.job import JobSpec, TemplateSource
from orchestrator.spec.samplers import category_key
from orchestrator.spec.targets import Stratum, budget, strata

SCAN_ROWS = 1 << 16  # sequence rows drawn at once while selecting
MAX_SCAN = 1 << 26  # sequence rows a round may pass over (~30 s of draws; a stratum of share 1e-4 and quota 1000: 1e7)
LOW_ACCEPTANCE = 0.02  # below this, a short stratum is one "the gates reject almost always"


@dataclass(frozen=True)
class Strata:
    """A job's strata, and how a drawn row's codes name one."""

    by: tuple[str, ...]
    items: tuple[Stratum, ...]
    sizes: tuple[int, ...]  # categories per `by` variable
    keys: np.ndarray  # each stratum's mixed-radix code, ascending
    order: np.ndarray  # stratum id of each entry of `keys`

    @classmethod
    def of(cls, spec: JobSpec) -> Strata:
        source, targets = spec.prompts.template, spec.targets
        assert source is not None and targets is not None
        listed, sampled = source.listed(), source.sampled()
        items = tuple(strata(targets, listed, sampled))
        cats = [listed[n] if n in listed else sampled[n].categories() or [] for n in targets.by]
        position = [{category_key(v): i for i, v in enumerate(c)} for c in cats]
        sizes = tuple(len(c) for c in cats)
        codes = np.array([_radix([position[j][category_key(v)] for j, v in enumerate(s.values)], sizes)
                          for s in items], dtype=np.int64)
        order = np.argsort(codes)
        return cls(tuple(targets.by), items, sizes, codes[order], order)

    @property
    def targets(self) -> np.ndarray:
        return np.array([s.target for s in self.items], dtype=np.int64)

    def of_rows(self, source: TemplateSource, indexes: np.ndarray) -> np.ndarray:
        """The stratum id of each sequence row in `indexes`."""
        cols = draws.columns(source, indexes, set(self.by))
        key = np.zeros(len(indexes), dtype=np.int64)
        scale = 1
        for name, size in zip(self.by, self.sizes, strict=True):
            key += cols[name].data.astype(np.int64) * scale
            scale *= size
        found = np.searchsorted(self.keys, key)
        assert (self.keys[np.minimum(found, len(self.keys) - 1)] == key).all(), "a draw outside the planned strata"
        return self.order[found]

    def per_round(self, source: TemplateSource, plan: Plan) -> list[np.ndarray]:
        """Rows each round of the plan generates per stratum (the first pass, when it has rows, first)."""
        first = np.zeros(len(self.items), dtype=np.int64)
        for start in range(0, plan.total_rows, SCAN_ROWS):
            ids = self.of_rows(source, np.arange(start, min(plan.total_rows, start + SCAN_ROWS), dtype=np.int64))
            first += np.bincount(ids, minlength=len(self.items))
        rounds = [np.bincount(self.of_rows(source, r.indexes), minlength=len(self.items)) for r in plan.rounds]
        return ([first] if plan.total_rows else []) + rounds

    def counts(self, source: TemplateSource, plan: Plan) -> np.ndarray:
        """Rows the plan generates per stratum, over all its rounds."""
        return sum(self.per_round(source, plan), np.zeros(len(self.items), dtype=np.int64))


def _radix(codes: list[int], sizes: tuple[int, ...]) -> int:
    key, scale = 0, 1
    for code, size in zip(codes, sizes, strict=True):
        key, scale = key + code * scale, scale * size
    return key


def quotas(missing: np.ndarray, kept: np.ndarray, generated: np.ndarray, samples: int, left: int) -> np.ndarray:
    """Rows to generate per stratum: its missing kept rows (plus one standard deviation of the kept
    count, sqrt(missing x (1 - acceptance))) over its
    acceptance so far, at most 4x the rows it had (an acceptance of 0 says little), scaled to `left`."""
    out = np.zeros(len(missing), dtype=np.int64)
    for s in np.flatnonzero(missing > 0):
        rate = (kept[s] + 0.5) / (generated[s] * samples + 1) if generated[s] else 1.0
        rate = min(rate, 1.0)
        want = math.ceil((missing[s] + math.sqrt(missing[s] * (1 - rate))) / (rate * samples))
        cap = max(math.ceil(missing[s] / samples), 4 * int(generated[s]))
        out[s] = min(want, cap)
    total = int(out.sum())
    if total > left:
        out = np.floor(out * (left / total)).astype(np.int64)
    return out


def select(source: TemplateSource, strata_: Strata, quota: np.ndarray, start: int) -> tuple[np.ndarray, int]:
    """The first rows from `start` on whose stratum has quota left, up to each quota; and where the scan stopped."""
    left, picked, at = quota.copy(), [], start
    while left.any() and at - start < MAX_SCAN:
        indexes = np.arange(at, at + SCAN_ROWS, dtype=np.int64)
        ids = strata_.of_rows(source, indexes)
        for s in np.flatnonzero(left):
            rows = np.flatnonzero(ids == s)[: left[s]]
            left[s] -= len(rows)
            picked.append(indexes[rows])
        at += SCAN_ROWS
    chosen = np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)
    return chosen, int(chosen[-1]) + 1 if len(chosen) else start


@dataclass(frozen=True)
class Standing:
    """Each stratum's rows so far (generated rows, kept rows after every gate and dedup)."""

    generated: np.ndarray
    kept: np.ndarray


def next_round(spec: JobSpec, plan: Plan, strata_: Strata, standing: Standing | None) -> Plan | None:
    """The plan with one more round for the strata below target (`standing`: their rows so far; None
    before any round, when each stratum's target is drawn as if every row were kept); None when all
    are met or a limit is reached."""
    source, targets = spec.prompts.template, spec.targets
    assert source is not None and targets is not None
    none = np.zeros(len(strata_.items), dtype=np.int64)
    standing = standing or Standing(none, none)
    missing = np.maximum(strata_.targets - standing.kept, 0)
    left = budget(targets, plan.total_rows, int(strata_.targets.sum())) - plan.rows
    if not missing.any() or plan.rounds_done >= targets.max_rounds or left <= 0:
        return None
    quota = quotas(missing, standing.kept, standing.generated, spec.sampling.n, left)
    for f in plan.seed_files:  # without replacement, a round draws at most the seed-file rows left
        if not source.seeds[f.variable].from_file.replace:  # type: ignore[union-attr]
            rest = sum(f.left())
            if quota.sum() > rest:
                quota = np.floor(quota * (rest / quota.sum())).astype(np.int64)
    if not quota.any():
        return None
    indexes, end = select(source, strata_, quota, plan.next_index)
    number = len(plan.rounds) + 1  # seed files: round 0 is the first pass, rows [0, total_rows)
    files = tuple(with_round(f, source.seeds[f.variable].from_file.replace,  # type: ignore[union-attr]
                             source.seed or 0, len(indexes)) for f in plan.seed_files)
    return replace(plan, rounds=(*plan.rounds, Round(number, plan.next_index, end, indexes)), seed_files=files)


def why_short(standing: Standing, s: int, samples: int, plan: Plan, spec: JobSpec, strata_: Strata) -> str | None:
    """Why stratum `s` ended below its target (None when it is met)."""
    if standing.kept[s] >= strata_.targets[s]:
        return None
    assert spec.targets is not None
    rate = standing.kept[s] / (standing.generated[s] * samples) if standing.generated[s] else 0.0
    if standing.generated[s] and rate < LOW_ACCEPTANCE:
        return f"the gates reject it almost always (acceptance {rate:.1%})"
    if plan.rows >= budget(spec.targets, plan.total_rows, int(strata_.targets.sum())):
        return f"max_rows ({plan.rows} rows generated) reached"
    if plan.rounds_done >= spec.targets.max_rounds:
        return f"max_rounds ({spec.targets.max_rounds}) reached"
    return "the seed file has no rows left to draw"
