"""A job's stages checked as a whole, before anything runs: one message per problem, on its field path.

Every name a stage reads or links to (`continue`, `judge`, `select.by/of`, `reference`) must be a seed
variable or an earlier stage (so there are no cycles), on the same branch when a fan-out is open;
fields read must exist (a JSON stage's schema properties, a judge's score and reason). At most one
fan-out is open at a time: a second one needs a select stage of the first before it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from jinja2 import TemplateSyntaxError

from orchestrator.spec.generation import Sampling
from orchestrator.spec.model import Loc
from orchestrator.spec.stages import (
    JUDGE_FIELDS,
    RESERVED_COLUMNS,
    SELECT_FIELDS,
    GenerateStage,
    JudgeStage,
    SelectStage,
    Stage,
    branches,
    final_stage,
    stage_columns,
    template_reads,
)

Found = list[tuple[Loc, str]]  # (field path within the stage, message)


@dataclass
class _Walk:
    """The stages checked so far, as the next one sees them."""

    stages: Sequence[Stage]
    seeds: Collection[str]
    job: Sampling
    index: dict[str, int] = field(default_factory=dict)  # stage name -> its (first) position
    branch: dict[str, str | None] = field(default_factory=dict)  # stage name -> the fan-out it runs per branch of
    merged_by: dict[str, str] = field(default_factory=dict)  # fan-out -> the select stage that merged it
    open: str | None = None  # the fan-out whose branches the next stage runs on
    columns: dict[str, str] = field(default_factory=dict)  # column -> the stage that writes it

    def stage(self, name: str) -> Stage:
        return self.stages[self.index[name]]

    def unreadable(self, name: str, i: int, *, template: bool = False) -> str | None:
        """Why stage i cannot read stage `name` (None: it can): unknown, not earlier, or on merged branches."""
        if name not in self.index:
            later = next((j for j in range(i, len(self.stages)) if self.stages[j].name == name), None)
            if later == i:
                return f"stage {name!r} cannot read its own output; a stage reads only earlier stages"
            if later is not None:
                return (f"{name!r} is stage {later}, which runs after this one; a stage reads only earlier stages: "
                        f"move {name!r} before stage {i}")
            earlier = ", ".join(self.index) or "none"
            if template:
                return (f"{name!r} is neither a seed variable ({', '.join(sorted(self.seeds)) or 'none'}) nor an earlier "
                        f"stage ({earlier}); fix the name, or add it to prompts.template.seeds")
            return f"{name!r} is not an earlier stage ({earlier}); fix the name"
        fan_out = self.branch[name]
        if fan_out is not None and fan_out != self.open:
            select = self.merged_by[fan_out]
            return (f"{name!r} runs once per branch of {fan_out!r}, which select stage {select!r} merged before "
                    f"this stage (it runs once per row); move this stage before {select!r}, or read {select}.chosen "
                    f"and {select}.rejected")
        return None


def stage_problems(stages: Sequence[Stage], seeds: Collection[str], job: Sampling, *,
                   top_judge: bool) -> list[tuple[Loc, str]]:
    """Every problem of `stages` over prompts.template.seeds and the job's sampling, each on its full path.

    `top_judge`: the spec has a top-level `judge:`, which scores the last generate stage.
    """
    walk, problems = _Walk(stages, seeds, job), []
    for i, stage in enumerate(stages):
        found = _name_problems(stage, walk) + _template_problems(stage, i, walk) + _link_problems(stage, i, walk)
        found += _fan_out(stage, walk)
        problems += [(("stages", i, *loc), message) for loc, message in found]
        walk.index.setdefault(stage.name, i)
        walk.branch.setdefault(stage.name, walk.open)
    last = final_stage(stages) if any(isinstance(s, GenerateStage) for s in stages) else None
    select = walk.merged_by.get(walk.branch.get(last.name) or "") if last is not None else None
    if top_judge and last is not None and select is not None:
        problems.append((("judge",), (f"the top-level judge scores the last generate stage, {last.name!r}, whose "
                                     f"branches select stage {select!r} merges; use a judge stage before {select!r}")))
    return problems


def _name_problems(stage: Stage, walk: _Walk) -> Found:
    found = _column_problems(stage, walk)
    for column in stage_columns(stage):
        walk.columns.setdefault(column, stage.name)
    if found:
        return found
    if stage.name in walk.index:
        return [(("name",), (f"{stage.name!r} is also the name of stage {walk.index[stage.name]}; stage names "
                            "must be unique (each names a column)"))]
    if stage.name in walk.seeds:
        return [(("name",), (f"{stage.name!r} is also a seed variable (prompts.template.seeds.{stage.name}); "
                            "rename the stage or the variable"))]
    return []


def _column_problems(stage: Stage, walk: _Walk) -> Found:
    """A column of this stage that is a reserved column, a seed variable or a column of an earlier stage."""
    for column in (c for c in stage_columns(stage) if c != stage.name):  # the name: checked_name, _name_problems
        if column in RESERVED_COLUMNS:
            return [(("name",), f"stage {stage.name!r} would write the column {column!r}, a column every row has; "
                                "rename the stage")]
        if column in walk.seeds:
            return [(("name",), f"stage {stage.name!r} would write the column {column!r}, which is a seed "
                                "variable; rename the stage or the variable")]
    clash = next((c for c in stage_columns(stage) if c in walk.columns and walk.columns[c] != stage.name), None)
    if clash is not None and not (clash == stage.name and clash in walk.index):  # a duplicate name: said below
        return [(("name",), f"stage {stage.name!r} would write the column {clash!r}, which stage "
                            f"{walk.columns[clash]!r} writes; rename one of them")]
    return []


def _template_problems(stage: Stage, i: int, walk: _Walk) -> Found:
    found: Found = []
    for template in stage.templates():
        try:
            reads = template_reads(template.text, expression=template.expression)
        except TemplateSyntaxError as e:
            found.append((template.loc, f"template syntax error on line {e.lineno}: {e.message}; fix the template"))
            continue
        except RecursionError:
            found.append((template.loc, "the template is nested too deeply to analyse; simplify it"))
            continue
        fields: dict[str, set[str | None]] = {}
        for read in reads:
            fields.setdefault(read.name, set()).add(read.field)
        for name in sorted(set(fields) - set(walk.seeds)):
            why = walk.unreadable(name, i, template=True) or _field_problem(name, fields[name], walk)
            found += [(template.loc, why)] if why else []
    return found


def _field_problem(name: str, reads: set[str | None], walk: _Walk) -> str | None:
    """Why a template cannot read these fields of the earlier stage `name` (None in `reads`: all of it)."""
    stage = walk.stage(name)
    if isinstance(stage, GenerateStage):
        schema = stage.sampling.over(walk.job).json_schema
        properties = list((schema or {}).get("properties") or {})
        wrong = sorted(r for r in reads if r is not None and r not in properties)
        if not wrong:
            return None
        if schema is None:
            return (f"stage {name!r} has no sampling.json_schema: its output is plain text, without fields; read "
                    f"{{{{ {name} }}}}, or give {name!r} a json_schema with the property {wrong[0]!r}")
        return (f"{wrong[0]!r} is not among the properties of stage {name!r}'s json_schema "
                f"({', '.join(properties) or 'none'}); read one of them, or add {wrong[0]!r} to the schema")
    outputs = JUDGE_FIELDS if isinstance(stage, JudgeStage) else SELECT_FIELDS
    if reads <= set(outputs):
        return None
    return (f"stage {name!r} is a {stage.kind} stage, whose outputs are "
            f"{', '.join(f'{name}.{o}' for o in outputs)}; read one of them")


def _link_problems(stage: Stage, i: int, walk: _Walk) -> Found:
    """Problems of the stages `stage` names outside its templates (continue, judge, reference, select)."""
    found: Found = []
    for loc, name in stage.links().items():
        if loc == ("reference",) and name in walk.seeds:
            continue
        why = walk.unreadable(name, i, template=loc == ("reference",))
        found += [(loc, why)] if why else []
    if found:
        return found
    if isinstance(stage, GenerateStage) and stage.continue_ is not None:
        return _continue_problems(stage, walk)
    if isinstance(stage, JudgeStage):
        return [(loc, f"stage {name!r} is a {walk.stage(name).kind} stage; "
                      + ("a judge stage scores a generate stage" if loc == ("judge",) else
                         "a reference is a seed variable or a generate stage's text"))
                for loc, name in stage.links().items()
                if name not in walk.seeds and not isinstance(walk.stage(name), GenerateStage)]
    if isinstance(stage, SelectStage):
        return _select_problems(stage, walk)
    return []


def _continue_problems(stage: GenerateStage, walk: _Walk) -> Found:
    name = stage.continue_
    assert name is not None
    target = walk.stage(name)
    if not isinstance(target, GenerateStage) or (target.messages is None and target.continue_ is None):
        what = "has a text prompt" if isinstance(target, GenerateStage) else f"is a {target.kind} stage"
        return [(("continue",), (f"stage {name!r} {what}, not a chat conversation; continue a generate stage with "
                                "messages, or a stage that continues one"))]
    if stage.model != target.model:
        return [(("model",), (f"a continue stage runs on the model of the conversation it continues; remove model "
                             f"here, or set it as stage {name!r} does"))]
    return []


def _select_problems(stage: SelectStage, walk: _Walk) -> Found:
    by, of = walk.stage(stage.select.by), walk.stage(stage.select.of)
    if not isinstance(by, JudgeStage):
        return [(("select", "by"), (f"stage {by.name!r} is a {by.kind} stage; select.by names a judge stage, whose "
                                   "scores rank the branches"))]
    if branches(of, walk.job) == 1:
        return [(("select", "of"), (f"stage {of.name!r} makes one branch per row; select.of names a stage with "
                                   "sampling.n > 1, whose branches it merges"))]
    if walk.index.get(by.judge, len(walk.stages)) < walk.index[of.name]:
        return [(("select", "by"), (f"judge stage {by.name!r} scores {by.judge!r}, which runs once per row, before "
                                   f"the fan-out {of.name!r}; select by a judge of {of.name!r} or of a stage after it"))]
    return []


def _fan_out(stage: Stage, walk: _Walk) -> Found:
    """Open or merge the fan-out after `stage`; a second fan-out while one is open is a problem."""
    if isinstance(stage, SelectStage):
        if walk.open is not None and stage.select.of == walk.open:
            walk.merged_by[walk.open], walk.open = stage.name, None
        return []
    if branches(stage, walk.job) == 1:
        return []
    if walk.open is not None:
        return [(("sampling", "n"), (f"a second fan-out while the branches of {walk.open!r} are open; add a select "
                                    f"stage of {walk.open!r} before this one (one fan-out at a time)"))]
    walk.open = stage.name
    return []
