"""A template's seed variables checked as a whole: samplers need `rows`, conditionals a known,
categorical parent whose every value they cover, and no cycle. Each problem on its field path."""

from __future__ import annotations

from typing import Any

from orchestrator.spec.model import Loc
from orchestrator.spec.samplers import Sampler, category_key


def _parent_values(name: str, listed: dict[str, list[Any]], sampled: dict[str, Sampler]) -> list[Any] | None:
    return listed[name] if name in listed else sampled[name].categories()


def _conditional_problems(name: str, sampler: Sampler, listed: dict[str, list[Any]],
                          sampled: dict[str, Sampler]) -> list[tuple[Loc, str]]:
    assert sampler.conditional is not None
    parent, at = sampler.conditional.on, ("seeds", name, "conditional")
    known = sorted({*listed, *sampled} - {name})
    if parent not in known:
        return [((*at, "on"), f"{parent!r} is not a seed variable ({', '.join(known) or 'none'}); name the "
                              "variable this one depends on")]
    values = _parent_values(parent, listed, sampled)
    if values is None:
        return [((*at, "on"), f"{parent!r} is drawn by {sampled[parent].kind}, which has no fixed values to "
                              "condition on; depend on a listed, weighted, conditional or small uniform_int variable")]
    keys = [category_key(v) for v in values]
    if len(set(keys)) < len(keys):
        return [((*at, "on"), f"{parent}'s values include both a text and a non-text value written alike (such as "
                              f"1 and \"1\"), which one entry of conditional.values cannot tell apart; make them "
                              "one type")]
    missing = [k for k in keys if k not in sampler.conditional.values]
    unknown = [k for k in sampler.conditional.values if k not in keys]
    found: list[tuple[Loc, str]] = []
    if missing:
        found.append(((*at, "values"), f"no values for {parent} = {', '.join(map(repr, missing[:5]))}"
                                       f"{' ...' if len(missing) > 5 else ''}; give an entry for every value of "
                                       f"{parent}"))
    found += [((*at, "values", k), f"{k!r} is not a value of {parent} ({', '.join(map(repr, keys[:8]))}"
                                   f"{' ...' if len(keys) > 8 else ''}); fix or remove it") for k in unknown]
    return found


def _cycle(sampled: dict[str, Sampler]) -> list[str] | None:
    """A cycle of conditionals (each on the next), if any."""
    for start in sorted(sampled):
        path, name = [start], start
        while (s := sampled.get(name)) is not None and s.conditional is not None:
            name = s.conditional.on
            if name in path:
                return path[path.index(name):] + [name]
            path.append(name)
    return None


def rows_problem(sampled: dict[str, Sampler], rows: int | None) -> list[tuple[Loc, str]]:
    """Samplers need rows: N (unless targets plan the rows: JobSpec checks)."""
    if not sampled or rows is not None:
        return []
    return [(("prompts", "template", "rows"), f"with samplers ({', '.join(sorted(sampled))}) give rows: N, the rows "
                                              "to draw (or targets, which draw rows until each stratum has its kept "
                                              "rows)")]


def sampler_problems(listed: dict[str, list[Any]], sampled: dict[str, Sampler], *, rows: int | None,
                     sample: bool, seed: int | None) -> list[tuple[Loc, str]]:
    if not sampled:
        return [((key,), f"{key} needs a sampler among the seeds (rows are the product of the lists); remove "
                         f"{key}" + (", or use sample.n to draw rows of the product" if key == "rows" else ""))
                for key, value in (("rows", rows), ("seed", seed)) if value is not None]
    found: list[tuple[Loc, str]] = []
    if sample:
        found.append((("sample",), "sample draws rows of the product of lists; with samplers give rows: N instead"))
    for name, sampler in sorted(sampled.items()):
        if sampler.conditional is not None:
            found += _conditional_problems(name, sampler, listed, sampled)
    if not found and (cycle := _cycle(sampled)):
        found.append((("seeds", cycle[0], "conditional", "on"),
                      f"conditionals form a cycle ({' -> '.join(cycle)}); one of them must not depend on the others"))
    return found
