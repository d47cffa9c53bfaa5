"""Stages: a job as a row program (question, answer, judge, select), each stage one column of the row.

`stages:` is an ordered list; each row runs its stages in order. A stage is one of three kinds, told
apart by the key saying what it does:

    - name: question                 # generate: a prompt, as text or chat messages
      messages:
        - {role: user, content: "Write a {{ difficulty }} question about {{ topic }}."}
      sampling: {temperature: 0.9}   # overrides of the job's sampling
    - name: answer
      continue: question             # the next user turn of question's conversation
      text: Now answer your question.
      sampling: {n: 4}               # fan-out: the stages after it run once per branch
    - name: score                    # judge: the fields of the top-level `judge:`
      judge: answer
      rubric: The answer is correct and complete.
    - name: pair                     # select: the best and worst branch, a DPO pair
      select: {by: score, of: answer}

Templates (text, message contents, `when`) read the seed variables and earlier stages: `{{ question }}`
is its text, `{{ question.difficulty }}` a property of its JSON output (a stage with
`sampling.json_schema`), `{{ score.score }}` and `{{ score.reason }}` a judge stage's outputs.
This module holds the models and the pure helpers the workers run stages with; `stage_checks`
validates a list of stages as a whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

import jinja2
from jinja2 import nodes
from jinja2.defaults import DEFAULT_NAMESPACE
from jinja2.parser import Parser
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    field_validator,
    model_validator,
)

from orchestrator.spec.generation import Message, Sampling, checked_schema
from orchestrator.spec.model import Loc, ModelSpec, Strict, invalid
from orchestrator.spec.quality import Filters, Judge

NAME = re.compile(r"[a-z_][a-z0-9_]{0,63}")
# Columns of every row a stage's column would collide with: orchestrator/commit/schemas.py's RESERVED
# (a test keeps them in step), the DPO columns of a select stage and the seed of lineage.
RESERVED_COLUMNS = frozenset({
    "row_id", "sample_index", "custom_id", "prompt", "messages", "completion", "finish_reason",
    "prompt_tokens", "completion_tokens", "judge_score", "judge_reason", "judge_cut", "error_code",
    "error_message", "reject_reason", "reject_detail", "lineage", "chosen", "rejected", "chosen_score",
    "rejected_score", "seed", "at_stage"})
JUDGE_FIELDS = ("score", "reason")  # a judge stage's outputs: {{ name.score }}, {{ name.reason }}
SELECT_FIELDS = ("chosen", "rejected", "chosen_score", "rejected_score")  # a select stage's outputs
# The columns each kind of stage adds to a row, as suffixes of its name ("": the column named as the stage)
COLUMN_SUFFIXES = {"generate": ("", "finish_reason", "prompt_tokens", "cached_tokens", "completion_tokens"),
                   "judge": ("score", "reason", "cut"), "select": SELECT_FIELDS}
KIND_KEYS = {"generate": ("text", "messages"), "judge": ("judge",), "select": ("select",)}
KINDS = "a stage is one kind: generate (text or messages), judge (judge: <stage>) or select (select: {by, of})"


def stage_columns(stage: Stage) -> list[str]:
    """The columns a stage adds to each row: `name` and `name_<suffix>` (COLUMN_SUFFIXES)."""
    return [f"{stage.name}_{suffix}" if suffix else stage.name for suffix in COLUMN_SUFFIXES[stage.kind]]


def checked_name(name: str) -> str:
    """A pydantic field check: a stage name is a lowercase identifier, not a reserved column."""
    if not NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a stage name: lowercase letters, digits and _, not starting with a "
                         "digit, at most 64 characters (it names a column and a template variable)")
    if name in RESERVED_COLUMNS:
        raise ValueError(f"{name!r} is a reserved column name; rename the stage")
    return name


class Template(NamedTuple):
    """One Jinja source of a stage: its path within the stage, its text, and whether it is an expression (`when`)."""

    loc: Loc
    text: str
    expression: bool = False


def _when(when: str | None) -> list[Template]:
    return [] if when is None else [Template(("when",), when, expression=True)]


WHEN = Field(None, description="A Jinja expression over the seeds and earlier stages (\"difficulty == 'hard'\"); "
                               "false skips the stage for that row.")


class StageSampling(Strict):
    """A stage's overrides of the job's `sampling`: each unset field takes the job's value."""

    temperature: StrictFloat | None = Field(None, ge=0)
    top_p: StrictFloat | None = Field(None, gt=0, le=1)
    max_tokens: StrictInt | None = Field(None, ge=1)
    n: StrictInt | None = Field(None, ge=1, description="n > 1 fans the row out: the stages after this one run "
                                                        "once per branch, until a select stage merges them.")
    seed: StrictInt | None = None
    stop: list[str] | None = None
    ignore_eos: StrictBool | None = None
    json_schema: dict[str, Any] | None = Field(
        None, description="JSON output; later templates read its properties as {{ stage.property }}.")
    _schema = field_validator("json_schema")(checked_schema)

    def over(self, job: Sampling) -> Sampling:
        """The stage's full sampling: these overrides over the job's."""
        return job.model_copy(update={k: v for k in type(self).model_fields if (v := getattr(self, k)) is not None})


class GenerateStage(Strict):
    """Generate: a completion from a prompt that reads the seeds and earlier stages; the stage's column is its text."""

    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)
    kind: ClassVar[Literal["generate"]] = "generate"

    name: str = Field(..., description="An identifier: the stage's column and its name in later templates.")
    text: str | None = Field(None, description="A Jinja template rendered to a plain prompt; of a continue "
                                               "stage, the next user turn.")
    messages: list[Message] | None = Field(None, min_length=1, description=(
        "Chat messages whose contents are Jinja templates; of a continue stage, the turns added."))
    continue_: str | None = Field(None, alias="continue", description=(
        "An earlier chat stage: this one is the next user turn of its conversation (what that stage was "
        "prompted with, its reply, then this prompt), sent as token ids so the prefix cache serves it."))
    sampling: StageSampling = StageSampling()
    model: Literal["self"] | ModelSpec = Field(
        "self", description="self: the job's engine; or a model spec, loaded once per worker.")
    when: str | None = WHEN
    filters: Filters | None = Field(None, description="Checks on the completion; a failing branch goes to rejected/.")
    _name = field_validator("name")(checked_name)

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerateStage:
        if (self.text is None) == (self.messages is None):
            raise ValueError("give exactly one of text or messages")
        system = [k for k, m in enumerate(self.messages or []) if m.role == "system"]
        if self.continue_ is not None and system:
            raise invalid("GenerateStage", [(("messages", system[0], "role"), (
                "a continue stage adds turns to a conversation, whose first stage sets the system message; "
                "make this a user turn"))])
        return self

    def templates(self) -> list[Template]:
        """The stage's Jinja sources: its prompt's, then its `when`."""
        prompt = [Template(("text",), self.text)] if self.text is not None else [
            Template(("messages", k, "content"), m.content) for k, m in enumerate(self.messages or [])]
        return prompt + _when(self.when)

    def links(self) -> dict[Loc, str]:
        """The earlier stages it names outside its templates, by field."""
        return {} if self.continue_ is None else {("continue",): self.continue_}


class JudgeStage(Judge):
    """Judge: scores an earlier generate stage against a rubric, with the fields of the top-level `judge:`.

    Its outputs are `<name>.score` and `<name>.reason`; a branch scoring under min_score goes to rejected/.
    """

    kind: ClassVar[Literal["judge"]] = "judge"

    name: str = Field(..., description="An identifier: the stage's column prefix and its name in later templates.")
    judge: str = Field(..., description="The earlier generate stage scored.")
    reference: str | None = Field(None, min_length=1, description=(
        "A seed variable or an earlier generate stage holding each row's reference answer, shown to the "
        "judge as an answer that deserves the top score."))
    when: str | None = WHEN
    _name = field_validator("name")(checked_name)

    def templates(self) -> list[Template]:
        return _when(self.when)

    def links(self) -> dict[Loc, str]:
        found: dict[Loc, str] = {("judge",): self.judge}
        return found if self.reference is None else found | {("reference",): self.reference}


class Selection(Strict):
    by: str = Field(..., description="A judge stage: its scores rank the branches.")
    of: str = Field(..., description="The fan-out stage (sampling.n > 1) whose branches are merged.")


class SelectStage(Strict):
    """Select: merges the branches of a fan-out into one row, a preference pair as TRL's DPO reads it.

    `chosen` and `rejected` are the outputs of the stage `by` judges on the best- and worst-scored
    branches of `of` (with `chosen_score`, `rejected_score`); ties and rows with fewer than two
    scored branches go to rejected/ with a reason. It runs on every row, so it takes no `when`.
    """

    kind: ClassVar[Literal["select"]] = "select"

    name: str = Field(..., description="An identifier: the stage's column prefix and its name in later templates.")
    select: Selection
    _name = field_validator("name")(checked_name)

    @model_validator(mode="before")
    @classmethod
    def _always_runs(cls, data: Any) -> Any:
        if isinstance(data, dict) and "when" in data:
            raise invalid("SelectStage", [(("when",), ("a select stage runs on every row (it merges the branches "
                                                       "of its fan-out); put the condition on a stage before it"))])
        return data

    def templates(self) -> list[Template]:
        return []

    def links(self) -> dict[Loc, str]:
        return {("select", "by"): self.select.by, ("select", "of"): self.select.of}


STAGE_KINDS: dict[str, type[GenerateStage | JudgeStage | SelectStage]] = {
    "generate": GenerateStage, "judge": JudgeStage, "select": SelectStage}


def _one_kind(data: Any) -> Any:
    """A stage mapping, validated as the kind its keys name: one message when they name none, or several."""
    if isinstance(data, tuple(STAGE_KINDS.values())):
        return data
    if not isinstance(data, dict):
        raise ValueError(f"{KINDS}, given as a mapping")  # noqa: TRY004 - pydantic reports a ValueError
    kinds = [kind for kind, keys in KIND_KEYS.items() if any(k in data for k in keys)]
    if len(kinds) != 1:
        given = [k for keys in KIND_KEYS.values() for k in keys if k in data]
        raise ValueError(f"{KINDS}; this one has {' and '.join(given)}: keep one" if given else f"{KINDS}; give one")
    return STAGE_KINDS[kinds[0]].model_validate(data)


Stage = Annotated[GenerateStage | JudgeStage | SelectStage, BeforeValidator(_one_kind)]


# --- what a stage reads ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Read:
    """A name a template reads, and the field of it (`q.difficulty`, `q['difficulty']`); field None: all of it."""

    name: str
    field: str | None = None


_PROVIDED = frozenset(DEFAULT_NAMESPACE) | {"loop", "caller", "varargs", "kwargs", "self"}  # Jinja's own names


def template_reads(text: str, *, expression: bool = False) -> set[Read]:
    """What a template (or, with `expression`, a `when` expression) reads of its context.

    Parsing only: nothing is compiled, folded or run, so no template can hang this (workers render in
    the bounded sandbox). A name the template binds itself (a loop variable, a `set`) is not read; a
    method call (`q.upper()`) reads all of `q`. jinja2.TemplateSyntaxError when it does not parse.
    """
    walked = list(_walk(_expression(text) if expression else jinja2.Environment().parse(text)))
    bound = {n.name for n, _ in walked if isinstance(n, nodes.Name) and n.ctx != "load"} | _PROVIDED
    callees = {id(n.node) for n, _ in walked if isinstance(n, nodes.Call)}
    return {Read(n.name, _field(n, parent, callees)) for n, parent in walked
            if isinstance(n, nodes.Name) and n.ctx == "load" and n.name not in bound}


def _expression(text: str) -> nodes.Expr:
    parser = Parser(jinja2.Environment(), text, state="variable")
    expr = parser.parse_expression()
    if not parser.stream.eos:
        token = parser.stream.current
        raise jinja2.TemplateSyntaxError(f"unexpected {token.value!r} after the expression", token.lineno)
    return expr


def _walk(root: nodes.Node) -> Iterator[tuple[nodes.Node, nodes.Node | None]]:
    """Every node with its parent, without recursion (a deeply nested template cannot overflow the stack)."""
    stack: list[tuple[nodes.Node, nodes.Node | None]] = [(root, None)]
    while stack:
        node, parent = stack.pop()
        yield node, parent
        stack.extend((child, node) for child in node.iter_child_nodes())


def _field(name: nodes.Name, parent: nodes.Node | None, callees: set[int]) -> str | None:
    if isinstance(parent, nodes.Getattr) and id(parent) not in callees:
        return parent.attr
    if isinstance(parent, nodes.Getitem) and parent.node is name and isinstance(parent.arg, nodes.Const) \
            and isinstance(parent.arg.value, str):
        return parent.arg.value
    return None


def stage_reads(stage: Stage) -> set[Read]:
    """Everything a stage's templates and `when` read; jinja2.TemplateSyntaxError when one does not parse."""
    return {r for t in stage.templates() for r in template_reads(t.text, expression=t.expression)}


def referenced_stages(stage: Stage, stages: Sequence[Stage]) -> set[str]:
    """The stages whose outputs `stage` needs: those its templates read, and those it continues, judges or selects."""
    return ({r.name for r in stage_reads(stage)} | set(stage.links().values())) & {s.name for s in stages}


# --- fan-out and conversations --------------------------------------------------------------------

def branches(stage: Stage, job: Sampling) -> int:
    """How many branches a stage makes of each row: a generate stage's merged sampling.n, 1 for the others."""
    return stage.sampling.over(job).n if isinstance(stage, GenerateStage) else 1


def branch_of(stages: Sequence[Stage], job: Sampling) -> dict[str, str | None]:
    """Stage name -> the fan-out stage it runs once per branch of (a fan-out is its own); None: once per row.

    A select stage merges the open fan-out: it and the stages after it run once per row again.
    """
    out: dict[str, str | None] = {}
    fan_out: str | None = None
    for stage in stages:
        if isinstance(stage, SelectStage):
            fan_out = None
        elif fan_out is None and branches(stage, job) > 1:
            fan_out = stage.name
        out[stage.name] = fan_out
    return out


def conversation(stages: Sequence[Stage], name: str) -> list[GenerateStage]:
    """The generate stages whose turns make stage `name`'s conversation, first to last: its `continue` chain."""
    by_name = {s.name: s for s in stages if isinstance(s, GenerateStage)}
    chain = [by_name[name]]
    while chain[-1].continue_ is not None:
        chain.append(by_name[chain[-1].continue_])
    return chain[::-1]


def final_stage(stages: Sequence[Stage]) -> GenerateStage:
    """The last generate stage: the one the top-level `judge:` scores."""
    return [s for s in stages if isinstance(s, GenerateStage)][-1]


def stage_identity(stages: Sequence[Stage]) -> list[dict[str, Any]]:
    """The stages as the job id hashes them: without a model's kv_cache_gib (the cache size never changes the data)."""
    dumped = [s.model_dump(mode="json") for s in stages]
    for d in dumped:
        if isinstance(d.get("model"), dict):
            d["model"].pop("kv_cache_gib")
    return dumped
