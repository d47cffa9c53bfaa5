"""Targets: generate until every stratum of the kept rows has its target, then keep exactly that.

    targets:
      by: [topic, difficulty]      categorical seed variables (listed, weighted, conditional, small uniform_int)
      kept_rows: 500               kept rows per stratum, or
      shares: {math: {easy: 0.2, hard: 0.3}, code: {easy: 0.25, hard: 0.25}}   nested in `by` order
      total_kept_rows: 2000        with shares: the kept rows over all strata
      max_rounds: 5                rounds of generation, the first pass included
      max_rows: 10000              rows generated over all rounds (default: 4 x the targeted rows)

Without prompts.template.rows the first round draws each stratum's target (as if every row were
kept); with it, the first pass is rows [0, rows) as in any job, and the rounds after it fill in.

A stratum is one combination of the `by` variables' values that the samplers can draw; its planned
share is exact (weights, conditionals and listed cycles multiplied out), so a stratum no draw can
reach is never a target. How the rounds are planned is orchestrator/plan/rounds.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from pydantic import Field, StrictInt, model_validator

from orchestrator.spec.model import Loc, Strict
from orchestrator.spec.samplers import Sampler, category_key

MAX_STRATA = 100_000  # joint combinations of the `by` variables (and the parents they depend on) enumerated
DEFAULT_BUDGET = 4  # max_rows default: this many times the targeted rows


class Targets(Strict):
    by: list[str] = Field(..., min_length=1, description="The seed variables whose value combinations are the strata.")
    kept_rows: StrictInt | None = Field(None, ge=1, description="Kept rows wanted in every stratum.")
    shares: dict[str, Any] | None = Field(None, description=(
        "Each stratum's share of total_kept_rows, nested in `by` order (need not sum to 1)."))
    total_kept_rows: StrictInt | None = Field(None, ge=1, description="With shares: the kept rows over all strata.")
    max_rounds: StrictInt = Field(5, ge=1, le=100, description="Rounds of generation, the first pass included.")
    max_rows: StrictInt | None = Field(None, ge=1, description=(
        f"Rows generated over all rounds, at most (default {DEFAULT_BUDGET} x the targeted rows)."))

    @model_validator(mode="before")
    @classmethod
    def _yaml_keys(cls, data: Any) -> Any:
        """A value written as a YAML number or boolean (`1: 0.5`) keys its share by its JSON text, as
        `category_key` names a stratum's values."""
        def keyed(node: Any) -> Any:
            return {category_key(k): keyed(v) for k, v in node.items()} if isinstance(node, dict) else node
        if isinstance(data, dict) and isinstance(data.get("shares"), dict):
            data = {**data, "shares": keyed(data["shares"])}
        return data

    @model_validator(mode="after")
    def _one_goal(self) -> Targets:
        if (self.kept_rows is None) == (self.shares is None):
            raise ValueError("give exactly one of kept_rows (per stratum) or shares (with total_kept_rows)")
        if (self.shares is None) != (self.total_kept_rows is None):
            raise ValueError("shares need total_kept_rows, the kept rows they divide; kept_rows needs neither")
        if len(set(self.by)) < len(self.by):
            raise ValueError("targets.by names a variable twice; name each once")
        return self


@dataclass(frozen=True)
class Stratum:
    values: tuple[Any, ...]  # the `by` variables' values, in `by` order
    share: float  # the share of drawn rows that fall in it (exact)
    target: int  # kept rows wanted

    @property
    def label(self) -> str:
        return " / ".join(category_key(v) for v in self.values)


def _categories(name: str, listed: dict[str, list[Any]], sampled: dict[str, Sampler]) -> list[Any] | None:
    return listed[name] if name in listed else sampled[name].categories()


def _probabilities(name: str, listed: dict[str, list[Any]], sampled: dict[str, Sampler],
                   parent_value: Any) -> list[float]:
    """P(each category of `name` | its parent's value): the draws' exact law (orchestrator/plan/draws.py)."""
    values = _categories(name, listed, sampled)
    assert values is not None
    if name in listed:
        return [1 / len(values)] * len(values)
    s = sampled[name]
    if s.weighted is not None:
        total = sum(s.weighted.values())
        return [w / total for w in s.weighted.values()]
    if s.conditional is not None:
        entry = s.conditional.values[category_key(parent_value)]
        weights = dict.fromkeys(map(_key, entry), 1.0) if isinstance(entry, list) else \
            {_key(v): float(w) for v, w in entry.items()}
        total = sum(weights.values())
        return [weights.get(_key(v), 0.0) / total for v in values]
    return [1 / len(values)] * len(values)  # a small uniform_int


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _closure(by: list[str], sampled: dict[str, Sampler]) -> list[str]:
    """`by` and every parent they depend on, each after its parent."""
    need, todo = set(), list(by)
    while todo:
        name = todo.pop()
        if name not in need:
            need.add(name)
            if name in sampled and sampled[name].conditional is not None:
                todo.append(sampled[name].conditional.on)  # type: ignore[union-attr]
    order: list[str] = []
    while len(order) < len(need):
        order += sorted(n for n in need - set(order) if n not in sampled or sampled[n].conditional is None
                        or sampled[n].conditional.on in order)  # type: ignore[union-attr]
    return order


def planned_strata(by: list[str], listed: dict[str, list[Any]], sampled: dict[str, Sampler]
                   ) -> list[tuple[tuple[Any, ...], float]]:
    """Every combination of the `by` values a draw can give, with its exact share, in value order."""
    names = _closure(by, sampled)
    joint: list[tuple[dict[str, Any], float]] = [({}, 1.0)]
    for name in names:
        s = sampled.get(name)
        parent = s.conditional.on if s is not None and s.conditional is not None else None
        values = _categories(name, listed, sampled)
        assert values is not None
        grown = []
        for row, p in joint:
            for v, q in zip(values, _probabilities(name, listed, sampled, row.get(parent)), strict=True):
                if q > 0:
                    grown.append(({**row, name: v}, p * q))
        if len(grown) > MAX_STRATA:
            raise ValueError(f"targets.by spans more than {MAX_STRATA} value combinations; stratify by fewer "
                             "or coarser variables")
        joint = grown
    shares: dict[str, tuple[tuple[Any, ...], float]] = {}
    for row, p in joint:
        values = tuple(row[n] for n in by)
        key = _key(values)
        shares[key] = (values, shares[key][1] + p if key in shares else p)
    order = {n: {_key(v): i for i, v in enumerate(_categories(n, listed, sampled) or [])} for n in by}
    return sorted(shares.values(), key=lambda item: [order[n][_key(v)] for n, v in zip(by, item[0], strict=True)])


def _share_of(shares: dict[str, Any], values: tuple[Any, ...]) -> Any:
    node: Any = shares
    for v in values:
        node = node.get(category_key(v)) if isinstance(node, dict) else None
    return node


def _share_problems(targets: Targets, combos: list[tuple[tuple[Any, ...], float]]) -> list[tuple[Loc, str]]:
    assert targets.shares is not None
    known = {tuple(category_key(v) for v in values) for values, _ in combos}
    found: list[tuple[Loc, str]] = []

    def walk(node: Any, path: tuple[str, ...]) -> None:
        at: Loc = ("targets", "shares", *path)
        if len(path) == len(targets.by):
            if isinstance(node, bool) or not isinstance(node, int | float) or not node > 0:
                found.append((at, f"{node!r} is not a positive share; give a number above 0"))
            elif path not in known:
                found.append((at, f"{' / '.join(path)} is not a stratum the samplers can draw; remove it"))
            return
        if not isinstance(node, dict):
            found.append((at, f"shares nest one level per targets.by variable ({', '.join(targets.by)}); "
                              f"give a mapping of {targets.by[len(path)]}'s values here"))
            return
        for k, v in node.items():
            walk(v, (*path, str(k)))

    walk(targets.shares, ())
    missing = [" / ".join(k) for k in sorted(known) if not isinstance(_share_of(targets.shares, k), int | float)]
    if missing and not found:
        more = " ..." if len(missing) > 5 else ""
        found.append((("targets", "shares"), f"no share for {', '.join(missing[:5])}{more}"
                                             "; give every stratum a share"))
    return found


def _largest_remainder(weights: list[float], total: int) -> list[int]:
    """Integers summing to `total` in proportion to `weights`."""
    exact = [w / sum(weights) * total for w in weights]
    out = [math.floor(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: out[i] - exact[i])[: total - sum(out)]:
        out[i] += 1
    return out


def strata(targets: Targets, listed: dict[str, list[Any]], sampled: dict[str, Sampler]) -> list[Stratum]:
    """The strata and their targets (validated specs only)."""
    combos = planned_strata(targets.by, listed, sampled)
    if targets.kept_rows is not None:
        return [Stratum(values, share, targets.kept_rows) for values, share in combos]
    assert targets.shares is not None and targets.total_kept_rows is not None
    weights = [float(_share_of(targets.shares, tuple(category_key(v) for v in values))) for values, _ in combos]
    counts = _largest_remainder(weights, targets.total_kept_rows)
    return [Stratum(values, share, n) for (values, share), n in zip(combos, counts, strict=True)]


def budget(targets: Targets, first_rows: int, targeted: int) -> int:
    """max_rows, or its default (`first_rows`: a first pass of prompts.template.rows, if given)."""
    return targets.max_rows if targets.max_rows is not None else max(first_rows, DEFAULT_BUDGET * targeted)


def targets_problems(targets: Targets, listed: dict[str, list[Any]], sampled: dict[str, Sampler],
                     rows: int | None) -> list[tuple[Loc, str]]:
    """Each problem of `targets` on its field path (the template's seeds already valid)."""
    if not sampled:
        return [(("targets",), "targets draw rows from the samplers: give prompts.template a sampler among "
                               "its seeds (a listed variable can be written as weighted: {value: 1, ...})")]
    found: list[tuple[Loc, str]] = []
    for i, name in enumerate(targets.by):
        values = _categories(name, listed, sampled) if name in listed or name in sampled else None
        if name not in listed and name not in sampled:
            found.append((("targets", "by", i), f"{name!r} is not a seed variable "
                                                f"({', '.join(sorted({*listed, *sampled}))}); name one of them"))
        elif values is None:
            found.append((("targets", "by", i), f"{name!r} is drawn by {sampled[name].kind}, which has no fixed "
                                                "values to stratify by; name a listed, weighted, conditional or "
                                                "small uniform_int variable"))
    if found:
        return found
    try:
        combos = planned_strata(targets.by, listed, sampled)
    except ValueError as e:
        return [(("targets", "by"), str(e))]
    if targets.shares is not None and (found := _share_problems(targets, combos)):
        return found
    targeted = sum(s.target for s in strata(targets, listed, sampled))
    if targets.max_rows is not None:
        if targeted > targets.max_rows:
            found.append((("targets", "max_rows"), f"the targets need {targeted} kept rows but max_rows is "
                                                   f"{targets.max_rows}, short even if every row were kept; raise "
                                                   "max_rows or lower the targets"))
        elif rows is not None and rows > targets.max_rows:
            found.append((("targets", "max_rows"), f"the first pass (prompts.template.rows: {rows}) is above max_rows "
                                                   f"({targets.max_rows}); raise max_rows or lower rows"))
    return found
