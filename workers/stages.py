"""Run a job's stages on one row: each row is its own task moving from stage to stage (no barrier
between stages, so the engine's batch stays full while rows are at different stages).

A row starts as one branch holding its seed values. A generate stage renders its prompt from the
branch's values, asks its engine, and records the reply (a fan-out stage's `n` replies become `n`
branches); a judge stage scores an earlier reply; a select stage merges the branches of a fan-out
into one preference pair. A branch ends in `errors/` when a stage fails for it (template, engine,
schema, judge), in `rejected/` when a filter or `min_score` rejects it; every ending says its stage.

A `continue` stage is the next turn of an earlier conversation: the engine gets that conversation as
token ids (what the model saw, what it wrote, then the new user turn), so its prefix cache serves the
whole earlier conversation; an engine that cannot give token ids is sent the conversation as messages.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from orchestrator import defaults
from orchestrator.errors import RowErrorCode
from orchestrator.spec.generation import Sampling
from orchestrator.spec.job import JobSpec
from orchestrator.spec.model import ModelSpec
from orchestrator.spec.quality import Judge
from orchestrator.spec.stages import GenerateStage, JudgeStage, SelectStage, Stage, branch_of
from workers import sandbox
from workers.engine import SAME_TURN, Completion, Engine
from workers.filters import rejection, schema_violation, stored_text
from workers.judge import Verdict, judge_reply, judge_sampling
from workers.prompts import PromptRow, RowFailure

EngineFor = Callable[[Literal["self"] | ModelSpec], Engine]
Message = dict[str, str]


class JsonOutput:
    """A JSON stage's output in later templates: `{{ q }}` prints its text, `{{ q.field }}` and `{{ q['field'] }}`
    read a property. It has no public attribute or method of its own, so no property name is shadowed
    (a dict's `q.items` would be its method, not the property `items`)."""

    __slots__ = ("_fields", "_text")

    def __init__(self, fields: dict[str, Any], text: str):
        self._fields, self._text = fields, text

    def __getattr__(self, name: str) -> Any:
        try:
            return self._fields[name]
        except KeyError:
            raise AttributeError(name) from None

    def __getitem__(self, name: str) -> Any:
        return self._fields[name]

    def __contains__(self, name: object) -> bool:
        return name in self._fields

    def __str__(self) -> str:
        return self._text


@dataclass(frozen=True)
class Turn:
    """What a generate stage wrote on a branch: the prompt it saw (text, or the conversation so far) and its reply."""

    stage: str
    prompt: str | None
    asked: list[Message] | None  # the conversation up to the reply (chat stages)
    reply: Completion
    ids: list[int] | None  # the conversation as token ids, prompt and reply (when a later stage needs them)
    engine: Engine

    @property
    def conversation(self) -> list[Message] | None:
        """The whole conversation with the reply, as TRL's SFTTrainer reads `messages`; None for a text stage."""
        return None if self.asked is None else [*self.asked, {"role": "assistant", "content": self.reply.text}]


@dataclass(frozen=True)
class Ending:
    """Why a branch ended before the last stage: in errors/ (a RowFailure) or rejected/ (reason, detail)."""

    stage: str
    failure: RowFailure | None = None
    reject: tuple[str, str] | None = None


@dataclass
class Tokens:
    """Tokens a row's requests cost, split as the shard's stats count them."""

    prompt: int = 0
    cached: int = 0
    completion: int = 0
    judge_prompt: int = 0
    judge_cached: int = 0
    judge_completion: int = 0
    filler_stripped: int = 0


@dataclass
class Branch:
    """One branch of a row: its values for templates, its output columns so far, and its turns."""

    sample: int
    values: dict[str, Any]
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> its output columns
    turns: dict[str, Turn] = field(default_factory=dict)
    last: Turn | None = None  # the latest generate stage's turn: the row's completion
    dpo: dict[str, Any] | None = None  # prompt, messages, chosen, rejected and scores after a select stage
    ending: Ending | None = None

    def fork(self, sample: int) -> Branch:
        return Branch(sample, dict(self.values), dict(self.columns), dict(self.turns), self.last, self.dpo)

    def end(self, ending: Ending) -> list[Branch]:
        self.ending = ending
        return [self]


@dataclass(frozen=True)
class SeedRow:
    index: int
    row_id: str
    seed: int
    variables: dict[str, Any]
    sampling: Sampling  # the job's sampling with this row's draws (orchestrator/plan/draws.py)


@dataclass
class Program:
    """A job's stages with what running them needs: the engines, which turns later stages continue or judge."""

    spec: JobSpec
    engines: EngineFor
    counts: dict[str, int] | None = None
    stages: Sequence[Stage] = ()
    branch_of: dict[str, str | None] = field(default_factory=dict)
    needs_ids: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        assert self.spec.stages is not None
        self.stages = self.spec.stages
        self.branch_of = branch_of(self.stages, self.spec.sampling)
        self.needs_ids = {s.continue_ for s in self.stages if isinstance(s, GenerateStage) and s.continue_} | {
            s.judge for s in self.stages if isinstance(s, JudgeStage) and s.model == "self"}
        if self.spec.judge is not None and self.spec.judge.model == "self":
            self.needs_ids.add(last_generate(self.stages).name)

    def count(self, stage: str, prompt: int, completion: int, *, generated: bool = True) -> None:
        """Progress counts as a request finishes: per stage (`completion_tokens/<stage>`, the metrics' stage
        label) and, for generate stages, the job's totals (judgements are counted apart, as without stages)."""
        if self.counts is None:
            return
        for key, n in (("prompt_tokens", prompt), ("completion_tokens", completion)):
            keys = [f"{key}/{stage}", key] if generated else [f"{key}/{stage}"]
            for k in keys:
                self.counts[k] = self.counts.get(k, 0) + n


def last_generate(stages: Sequence[Stage]) -> GenerateStage:
    return [s for s in stages if isinstance(s, GenerateStage)][-1]


def stage_seed(row_seed: int, stage: int, sample: int) -> int:
    """A request's sampling seed: its row's seed, stage and branch (the same on any worker, shard size or resume)."""
    digest = hashlib.blake2b(f"{row_seed}:{stage}:{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


def _failure(code: RowErrorCode, message: str) -> RowFailure:
    return RowFailure(code, message[: defaults.ERROR_MESSAGE_MAX_CHARS])


def runs(stage: GenerateStage | JudgeStage, values: dict[str, Any]) -> bool | RowFailure:
    """Whether the stage's `when` holds for these values (bounded, sandboxed); a template error otherwise."""
    if stage.when is None:
        return True
    try:
        text, = sandbox.render_all([f"{{% if {stage.when} %}}1{{% endif %}}"], values)
    except sandbox.RenderError as e:
        return _failure(RowErrorCode.TEMPLATE_ERROR, f"when: {e}")
    return text == "1"


def _skipped(branch: Branch, stage: Stage) -> list[Branch]:
    branch.values[stage.name] = None
    return [branch]


def _split(branches: list[Branch], ended: list[Branch]) -> tuple[list[Branch], list[Branch]]:
    """(the branches still live, every branch ended so far)."""
    return [b for b in branches if b.ending is None], ended + [b for b in branches if b.ending]


async def run_row(program: Program, row: SeedRow, tokens: Tokens) -> list[Branch]:
    """Every branch the row ends as: live ones reached the end, the others carry their `ending`."""
    live, ended = [Branch(0, dict(row.variables))], []
    for position, stage in enumerate(program.stages):
        if isinstance(stage, SelectStage):
            live, ended = _split(select(stage, live, program), ended)
            continue
        step = (_generate(program, stage, position, row, b, tokens) if isinstance(stage, GenerateStage)
                else _judge_stage(program, stage, row, b, tokens) for b in live)
        live, ended = _split([b for out in await asyncio.gather(*step) for b in out], ended)
    judge = program.spec.judge
    if judge is not None:  # a branch whose every generate stage was skipped has nothing to judge: kept as it is
        step = (_judge(program, judge, "judge", b.last, row, b, tokens) if b.last else _kept(b) for b in live)
        live, ended = _split([b for out in await asyncio.gather(*step) for b in out], ended)
    return ended + live


async def _kept(branch: Branch) -> list[Branch]:
    return [branch]


# --- generate -------------------------------------------------------------------------------------

def _asked(stage: GenerateStage, branch: Branch, rendered: list[str]) -> tuple[str | None, list[Message] | None]:
    """The prompt of a generate stage: its text, or its conversation (a continued one's turns, then these)."""
    if stage.continue_ is None and stage.text is not None:
        return rendered[0], None
    turns = [{"role": "user", "content": rendered[0]}] if stage.text is not None else [
        {"role": m.role, "content": t} for m, t in zip(stage.messages or [], rendered, strict=True)]
    before = branch.turns[stage.continue_].conversation or [] if stage.continue_ is not None else []
    return None, [*before, *turns]


def _request(stage: GenerateStage, position: int, row: SeedRow, branch: Branch, sampling: Sampling,
             prompt: str | None, asked: list[Message] | None, engine: Engine) -> PromptRow:
    """The engine request: a continued conversation as its token ids plus the new turns, when the engine has them."""
    base: dict[str, Any] = dict(index=row.index, row_id=f"{row.row_id}-{stage.name}-{branch.sample}",
                                seed=stage_seed(row.seed, position, branch.sample), sampling=sampling)
    before = branch.turns.get(stage.continue_ or "")
    if before is not None and before.ids is not None and before.engine is engine:
        return PromptRow(prompt_token_ids=before.ids, messages=(asked or [])[len(before.conversation or []):], **base)
    return PromptRow(prompt=prompt, messages=asked, **base)


def _value(sampling: Sampling, text: str) -> Any:
    """What later templates see of a reply: its text, or for a JSON stage its object (printing as its text)."""
    if sampling.json_schema is None:
        return text
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return text
    return JsonOutput(parsed, text) if isinstance(parsed, dict) else text


async def _generate(program: Program, stage: GenerateStage, position: int, row: SeedRow, branch: Branch,
                    tokens: Tokens) -> list[Branch]:
    """Run a generate stage on a branch: one branch per reply (n of them for a fan-out)."""
    go = runs(stage, branch.values)
    if isinstance(go, RowFailure):
        return branch.end(Ending(stage.name, go))
    if not go or (stage.continue_ is not None and stage.continue_ not in branch.turns):  # or what it continues
        return _skipped(branch, stage)
    sources = [stage.text] if stage.text is not None else [m.content for m in stage.messages or []]
    try:
        rendered = sandbox.render_all(sources, branch.values)
    except sandbox.RenderError as e:
        return branch.end(Ending(stage.name, _failure(RowErrorCode.TEMPLATE_ERROR, str(e))))
    sampling = stage.sampling.over(row.sampling)
    engine = program.engines(stage.model)
    prompt, asked = _asked(stage, branch, rendered)
    request = _request(stage, position, row, branch, sampling, prompt, asked, engine)
    result = await engine.generate(request, SAME_TURN if stage.name in program.needs_ids else None)
    if isinstance(result, RowFailure):
        return branch.end(Ending(stage.name, result))
    tokens.prompt += result[0].prompt_tokens if result else 0
    tokens.cached += result[0].cached_tokens if result else 0
    tokens.completion += sum(c.completion_tokens for c in result)
    program.count(stage.name, result[0].prompt_tokens if result else 0, sum(c.completion_tokens for c in result))
    fan_out = len(result) > 1
    return [_reply(stage, sampling, branch.fork(k) if fan_out else branch, Turn(stage.name, prompt, asked, c, None, engine),
                   tokens) for k, c in enumerate(result)]


def _reply(stage: GenerateStage, sampling: Sampling, branch: Branch, turn: Turn, tokens: Tokens) -> Branch:
    """Record one reply on its branch, or end the branch when its schema or filters reject it."""
    c = turn.reply
    text = stored_text(stage.filters, c.text) if stage.filters else c.text
    if text != c.text:
        tokens.filler_stripped += 1
    c = replace(c, text=text, follow_up_ids=c.follow_up_ids if text == c.text else None)
    turn = replace(turn, reply=replace(c, follow_up_ids=None), ids=c.follow_up_ids)
    branch.turns[stage.name], branch.last = turn, turn
    name = stage.name
    branch.columns[name] = {"": c.text, "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                            "cached_tokens": c.cached_tokens, "completion_tokens": c.completion_tokens}
    branch.values[name] = _value(sampling, c.text)
    if sampling.json_schema is not None and (problem := schema_violation(sampling.json_schema, c.text)):
        branch.end(Ending(name, RowFailure(RowErrorCode.SCHEMA_VIOLATION, problem)))
    elif stage.filters is not None and (rejected := rejection(stage.filters, c.text, c.completion_tokens)):
        branch.end(Ending(name, reject=rejected))
    return branch


# --- judge ----------------------------------------------------------------------------------------

async def _judge_stage(program: Program, stage: JudgeStage, row: SeedRow, branch: Branch,
                       tokens: Tokens) -> list[Branch]:
    go = runs(stage, branch.values)
    if isinstance(go, RowFailure):
        return branch.end(Ending(stage.name, go))
    turn = branch.turns.get(stage.judge)
    if not go or turn is None:  # skipped, or what it judges was skipped
        return _skipped(branch, stage)
    return await _judge(program, stage, stage.name, turn, row, branch, tokens)


def _judged_row(judge: Judge, turn: Turn, row: SeedRow, branch: Branch) -> PromptRow:
    """The row as the judge reads it: the turn's prompt, and the reference answer among the branch's values."""
    reference = {} if judge.reference is None else {judge.reference: branch.values.get(judge.reference)}
    return PromptRow(index=row.index, row_id=f"{row.row_id}-{turn.stage}", seed=row.seed, sampling=Sampling(),
                     prompt=turn.prompt, messages=turn.asked, variables={k: None if v is None else str(v)
                                                                         for k, v in reference.items()})


async def _judge(program: Program, judge: Judge, name: str, turn: Turn, row: SeedRow, branch: Branch,
                 tokens: Tokens) -> list[Branch]:
    """Score `turn` on the branch: `name`_score, _reason and _cut; a low score rejects the branch, no score is an error."""
    engine = program.engines(judge.model)
    reply = replace(turn.reply, follow_up_ids=turn.ids if engine is turn.engine else None)
    verdict = await judge_reply(engine, judge, _judged_row(judge, turn, row, branch), branch.sample, reply,
                                judge_sampling(judge))
    if isinstance(verdict, RowFailure):
        return branch.end(Ending(name, verdict))
    _count_judge(program, name, tokens, verdict)
    branch.columns[name] = {"score": verdict.score, "reason": verdict.reason, "cut": verdict.cut}
    branch.values[name] = {"score": verdict.score, "reason": verdict.reason}
    if verdict.score < judge.min_score:
        branch.end(Ending(name, reject=("judge_low_score", f"{verdict.score} < {judge.min_score}: {verdict.reason}")))
    return [branch]


def _count_judge(program: Program, name: str, tokens: Tokens, verdict: Verdict) -> None:
    tokens.judge_prompt += verdict.prompt_tokens
    tokens.judge_cached += verdict.cached_tokens
    tokens.judge_completion += verdict.completion_tokens
    program.count(name, verdict.prompt_tokens, verdict.completion_tokens, generated=False)


# --- select ---------------------------------------------------------------------------------------

def select(stage: SelectStage, live: list[Branch], program: Program) -> list[Branch]:
    """Merge the fan-out's branches into one row: chosen is the best-scored branch, rejected the worst.

    Fewer than two scored branches, or every score equal, rejects the row with a reason; ties for best
    (or worst) go to the lowest branch index, so the choice is deterministic.
    """
    by, judged = stage.select.by, next(s for s in program.stages if s.name == stage.select.by)
    assert isinstance(judged, JudgeStage)
    scored = sorted((b for b in live if isinstance(b.values.get(by), dict)), key=lambda b: b.sample)
    base = _merged(live[0] if live else None, program, stage)
    if base is None:
        return []
    if len(scored) < 2:
        return base.end(Ending(stage.name, reject=("select_too_few", (
            f"{len(scored)} scored branch{'es' if len(scored) != 1 else ''} of {stage.select.of!r} reached "
            f"{by!r}; a pair needs two"))))
    best = max(scored, key=lambda b: (b.values[by]["score"], -b.sample))
    worst = min(scored, key=lambda b: (b.values[by]["score"], -b.sample))
    if best.values[by]["score"] == worst.values[by]["score"]:
        return base.end(Ending(stage.name, reject=("select_tie", (
            f"all {len(scored)} scored branches of {stage.select.of!r} scored {best.values[by]['score']}"))))
    chosen, rejected = best.turns[judged.judge], worst.turns[judged.judge]
    outputs = {"chosen": chosen.reply.text, "rejected": rejected.reply.text,
               "chosen_score": best.values[by]["score"], "rejected_score": worst.values[by]["score"]}
    base.values[stage.name] = outputs
    base.columns[stage.name] = outputs
    fan_out = best.turns[stage.select.of]
    asked = fan_out.asked or []
    base.dpo = {"prompt": fan_out.prompt if fan_out.prompt is not None else asked[-1]["content"],
                "messages": fan_out.asked, **outputs, "finish_reason": chosen.reply.finish_reason,
                "prompt_tokens": chosen.reply.prompt_tokens, "completion_tokens": chosen.reply.completion_tokens}
    return [base]


def _merged(first: Branch | None, program: Program, stage: SelectStage) -> Branch | None:
    """A branch of the row as it was before the fan-out: the fan-out's stages' values and columns cleared."""
    if first is None:
        return None
    on_branches = {s for s, fan in program.branch_of.items() if fan == stage.select.of}
    base = Branch(0, {k: v for k, v in first.values.items() if k not in on_branches},
                  {k: v for k, v in first.columns.items() if k not in on_branches},
                  {k: t for k, t in first.turns.items() if k not in on_branches})
    base.last = None
    return base
