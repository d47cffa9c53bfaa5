"""Each row's sampled values: a pure function of the spec and the row's index, drawn for many rows at once.

Every sampled variable (and a drawn `sampling.temperature` / `top_p`) has its own stream: a 64-bit
key from its name and the seed (`prompts.template.seed`; `sampling.seed` for sampling parameters).
Row i's uniform in that stream is splitmix64(splitmix64(i) xor key), cut to 53 bits and centred in
its cell, so it lies in (0, 1) and never touches either end. The values therefore depend on nothing
but the spec and the row index: not on shard size, worker count, attempt or resume, and any range
of rows is drawn without drawing the rows before it (numpy, millions of rows a second).

Listed variables keep their meaning: with samplers present, row i takes product combination
i mod P of the listed variables (so each listed value gets its exact share), and the samplers draw
the rest.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from orchestrator.spec.generation import Sampling
from orchestrator.spec.job import TemplateSource
from orchestrator.spec.samplers import Sampler, category_key

GOLDEN, MIX_1, MIX_2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
CELL = 2.0 ** -53
CHUNK_CELLS = 1 << 20  # rows x values drawn at once (choice draws one uniform per value and row): ~50 MB
DRAWN_PARAMETERS = ("temperature", "top_p")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + GOLDEN
        x = (x ^ (x >> np.uint64(30))) * MIX_1
        x = (x ^ (x >> np.uint64(27))) * MIX_2
        return x ^ (x >> np.uint64(31))


def stream_key(seed: int, name: str) -> np.uint64:
    return np.uint64(int.from_bytes(hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest(), "big"))


def uniforms(key: np.uint64, indexes: np.ndarray) -> np.ndarray:
    """Row `indexes`' uniforms in (0, 1) of the stream `key`."""
    bits = _mix(_mix(indexes.astype(np.uint64)) ^ key) >> np.uint64(11)
    return (bits.astype(np.float64) + 0.5) * CELL


@dataclass(frozen=True)
class Column:
    """A variable's values for a range of rows: codes into `categories`, numbers, or (choice) code rows."""

    data: np.ndarray
    categories: list[Any] | None = None  # categorical: `data` indexes these (for choice: its values)

    def values(self) -> list[Any]:
        if self.categories is None:
            return self.data.tolist()
        if self.data.ndim == 2:
            return [[self.categories[c] for c in row] for row in self.data.tolist()]
        return [self.categories[c] for c in self.data.tolist()]

    def counts(self) -> Counter[Any]:
        """How often each categorical value occurs."""
        assert self.categories is not None and self.data.ndim == 1
        found = np.bincount(self.data, minlength=len(self.categories))
        return Counter({v: int(c) for v, c in zip(self.categories, found.tolist(), strict=True) if c})


def _categorical(u: np.ndarray, weights: list[float]) -> np.ndarray:
    cumulative = np.cumsum(np.asarray(weights, dtype=np.float64))
    return np.minimum(np.searchsorted(cumulative, u * cumulative[-1], side="right"), len(weights) - 1)


def _entry(options: list[Any] | dict[str, Any]) -> tuple[list[Any], list[float]]:
    if isinstance(options, dict):
        return list(options), [float(w) for w in options.values()]
    return list(options), [1.0] * len(options)


def _draw(sampler: Sampler, key: np.uint64, indexes: np.ndarray, parents: dict[str, Column]) -> Column:
    if sampler.choice is not None:
        return _choice(sampler, key, indexes)
    u = uniforms(key, indexes)
    if sampler.weighted is not None:
        values, weights = _entry(sampler.weighted)
        return Column(_categorical(u, weights), values)
    if sampler.uniform_int is not None:
        low, high = sampler.uniform_int
        picked = np.minimum(np.floor(u * (high - low + 1)).astype(np.int64), high - low)
        categories = sampler.categories()
        return Column(picked, categories) if categories else Column(picked + low)
    if sampler.uniform is not None:
        low, high = sampler.uniform
        return Column(low + u * (high - low))
    if sampler.normal is not None:
        from scipy import special  # only normal draws need it: the planner stays quick to import

        n = sampler.normal
        below = 0.0 if n.min is None else special.ndtr((n.min - n.mean) / n.std)
        above = 1.0 if n.max is None else special.ndtr((n.max - n.mean) / n.std)
        x = n.mean + n.std * special.ndtri(below + u * (above - below))
        return Column(np.clip(x, -math.inf if n.min is None else n.min, math.inf if n.max is None else n.max))
    assert sampler.conditional is not None
    return _conditional(sampler, u, parents[sampler.conditional.on])


def _conditional(sampler: Sampler, u: np.ndarray, parent: Column) -> Column:
    assert sampler.conditional is not None and parent.categories is not None
    union = sampler.categories()
    assert union is not None
    position = {category_key(v): i for i, v in enumerate(union)}
    codes = np.zeros(len(u), dtype=np.int64)
    for p, parent_value in enumerate(parent.categories):
        rows = parent.data == p
        if not rows.any():
            continue
        values, weights = _entry(sampler.conditional.values[category_key(parent_value)])
        into = np.array([position[category_key(v)] for v in values], dtype=np.int64)
        codes[rows] = into[_categorical(u[rows], weights)]
    return Column(codes, union)


def _choice(sampler: Sampler, key: np.uint64, indexes: np.ndarray) -> Column:
    """k distinct values: the k values with the smallest uniforms (one stream per value), in the values' order."""
    assert sampler.choice is not None
    values, k = sampler.choice.values, sampler.choice.k
    draws = np.stack([uniforms(_mix(np.array([key ^ np.uint64(j)]))[0], indexes) for j in range(len(values))], axis=1)
    picked = np.sort(np.argpartition(draws, k - 1, axis=1)[:, :k], axis=1)
    return Column(picked, values)


def _listed(source: TemplateSource, indexes: np.ndarray) -> dict[str, Column]:
    """Listed variables: row i's product combination i mod P, a mixed-radix number over the sorted names."""
    listed, size = source.listed(), source.product_size()
    combo = indexes % size if size < 1 << 62 else indexes.copy()
    out: dict[str, Column] = {}
    for name in sorted(listed, reverse=True):
        combo, digit = np.divmod(combo, len(listed[name]))
        out[name] = Column(digit, listed[name])
    return out


def sampler_order(source: TemplateSource) -> list[str]:
    """Sampled variables, each after the variable it is conditional on (validated acyclic)."""
    sampled, done, order = source.sampled(), set(source.listed()), []
    while len(order) < len(sampled):
        ready = [n for n, s in sorted(sampled.items()) if n not in done
                 and (s.conditional is None or s.conditional.on in done)]
        assert ready, "conditional samplers form a cycle (validated by TemplateSource)"
        order += ready
        done.update(ready)
    return order


def _with_parents(source: TemplateSource, names: set[str]) -> set[str]:
    """`names` and every sampled variable they are conditional on, transitively."""
    sampled, out, todo = source.sampled(), set(), list(names)
    while todo:
        name = todo.pop()
        if name not in out:
            out.add(name)
            s = sampled.get(name)
            if s is not None and s.conditional is not None:
                todo.append(s.conditional.on)
    return out


def columns(source: TemplateSource, indexes: np.ndarray, names: set[str] | None = None) -> dict[str, Column]:
    """Every variable's values for row `indexes` (int64), listed and sampled (only `names`, and the
    parents they depend on, when given)."""
    out = _listed(source, indexes)
    needed = None if names is None else _with_parents(source, names)
    for name in sampler_order(source):
        if source.seeds[name].from_file is not None or (needed is not None and name not in needed):
            continue  # a seed file's rows: orchestrator/plan/seed_files.py
        out[name] = _draw(source.seeds[name], stream_key(source.seed or 0, name), indexes, out)  # type: ignore[arg-type]
    return out


def chunks(source: TemplateSource, total: int) -> Iterator[dict[str, Column]]:
    """`columns` of rows [0, total) in bounded pieces."""
    widest = max([len(s.choice.values) for s in source.sampled().values() if s.choice is not None], default=1)
    step = max(1, CHUNK_CELLS // widest)
    for start in range(0, total, step):
        yield columns(source, np.arange(start, min(total, start + step), dtype=np.int64))


def index_values(source: TemplateSource, indexes: np.ndarray) -> list[dict[str, Any]]:
    """Rows `indexes`' drawn variables as Python values, one mapping a row (a shard drawn at once);
    `from_file` variables are read by the planner (orchestrator/plan/seed_files.py)."""
    drawn = {name: column.values() for name, column in columns(source, indexes).items()}
    return [dict(zip(drawn, row, strict=True)) for row in zip(*drawn.values(), strict=True)] if drawn else \
        [{} for _ in range(len(indexes))]


def index_sampling(sampling: Sampling, indexes: np.ndarray) -> list[Sampling]:
    """Rows `indexes`' sampling: each drawn parameter replaced by the row's draw (the same on any
    worker); the job's own `sampling` object for every row when nothing is drawn."""
    drawn = {name: _draw(getattr(sampling, name), stream_key(sampling.seed, f"sampling.{name}"), indexes, {}).values()
             for name in DRAWN_PARAMETERS if isinstance(getattr(sampling, name), Sampler)}
    if not drawn:
        return [sampling] * len(indexes)
    return [sampling.model_copy(update=dict(zip(drawn, row, strict=True))) for row in zip(*drawn.values(), strict=True)]
