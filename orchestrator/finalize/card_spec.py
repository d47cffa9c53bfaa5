"""The dataset card's "What was generated": the spec summarised for a reader (model, prompts, seeds, stages, gates).

Paths the spec reads are shown as it wrote them when relative, s3:// URIs whole, and a local absolute
path by its last part only: the card may travel (to the hub) without the machine's folders.
"""

from __future__ import annotations

import json
import os

from orchestrator.finalize.manifest import Manifest
from orchestrator.finalize.markdown import bullets, code, fenced, label, num, table, text
from orchestrator.spec.generation import Message
from orchestrator.spec.job import JobSpec, TemplateSource, field_value
from orchestrator.spec.model import ModelSpec
from orchestrator.spec.quality import Filters, Judge
from orchestrator.spec.samplers import Sampler
from orchestrator.spec.stages import GenerateStage, JudgeStage, Stage

SHOWN_VALUES = 6  # seed values listed per variable


def generated_section(m: Manifest, spec: JobSpec) -> str:
    revisions = ", ".join(text(r) for r in m.model_revisions) or "–"
    sampling = ", ".join(f"{code(k)} {text(json.dumps(v, sort_keys=True), 60)}"
                         for k, v in m.quality.about.sampling.items())
    rows = [["job", f"{code(m.job_id)} ({text(m.name)})"],
            ["model", f"{text(_model(spec, spec.model, 'model'))}, revision {revisions}"],
            ["prompts", _prompts(spec)], ["sampling", sampling]]
    parts = ["## What was generated", table(["", ""], rows)]
    template = spec.prompts.template
    if template is not None and (template.text is not None or template.messages):
        parts += ["Prompt template (Jinja):", _prompt(template.text, template.messages)]
    if template is not None and template.seeds:
        parts += ["Seed variables:", table(["variable", "kind", "values"], _seed_rows(spec, template))]
    if spec.stages:
        parts.append(_stages(spec, spec.stages))
    if gates := _gates(spec):
        parts += ["Gates every kept row passed, and what else the job did:", bullets(gates)]
    return "\n\n".join(parts)


def shown_path(spec: JobSpec, field: str) -> str:
    """The path at `field` as the card shows it: as the spec wrote it if relative, else s3:// whole or a
    local absolute path by its last part."""
    written = spec.relative_to.written.get(field) if spec.relative_to is not None else None
    value = written or str(field_value(spec, field))
    if written or value.startswith("s3://") or not os.path.isabs(value):
        return value
    return os.path.basename(value.rstrip("/")) or value


def _model(spec: JobSpec, model: ModelSpec, field: str) -> str:
    return shown_path(spec, f"{field}.path") if model.path is not None else str(model.id)


def _prompts(spec: JobSpec) -> str:
    p, template = spec.prompts, spec.prompts.template
    if p.file is not None:
        return f"the prompts of the file {text(shown_path(spec, 'prompts.file.uri'))}"
    if p.openai_batch is not None:
        return f"the requests of the OpenAI Batch file {text(shown_path(spec, 'prompts.openai_batch.uri'))}"
    assert template is not None
    form = "each stage's prompt" if spec.stages else "a chat template" if template.messages else "a text template"
    names = ", ".join(code(n) for n in template.seeds) or "no seed variables"
    if spec.targets is not None:
        how = "rows drawn in rounds until each stratum of the targets had its kept rows" + (
            f", {template.rows:,} in the first" if template.rows is not None else "")
    elif template.rows is not None:
        how = f"{template.rows:,} rows drawn"
    elif template.sample is not None:
        how = f"a sample of {template.sample.n:,} of their {template.product_size():,} combinations"
    else:
        how = f"all {template.product_size():,} combinations"
    return f"{form} over the seed variables {names} ({how})"


def _prompt(body: str | None, messages: list[Message] | None) -> str:
    if body is not None:
        return fenced(body)
    return "\n\n".join(f"{m.role}:\n\n{fenced(m.content)}" for m in messages or [])


def _values(values: list[object]) -> str:
    shown = ", ".join(text(label(v), 40) for v in values[:SHOWN_VALUES])
    return shown + (f", … ({len(values):,} in all)" if len(values) > SHOWN_VALUES else "")


def _seed_rows(spec: JobSpec, template: TemplateSource) -> list[list[str]]:
    rows = []
    for name, seed in template.seeds.items():
        if isinstance(seed, list):
            rows.append([code(name), "listed", _values(seed)])
        else:
            rows.append([code(name), seed.kind, _sampler(spec, name, seed)])
    return rows


def _sampler(spec: JobSpec, name: str, s: Sampler) -> str:
    if s.weighted is not None:
        return ", ".join(f"{text(v, 40)} ({num(w)})" for v, w in list(s.weighted.items())[:SHOWN_VALUES]) + (
            ", …" if len(s.weighted) > SHOWN_VALUES else "")
    if s.conditional is not None:
        return f"drawn given {code(s.conditional.on)}"
    if s.choice is not None:
        return f"{s.choice.k} of {_values(s.choice.values)}"
    if s.from_file is not None:
        where = shown_path(spec, f"prompts.template.seeds.{name}.from_file.uri")
        return f"a row of {text(where)}: " + ", ".join(code(c) for c in s.from_file.columns)
    if s.normal is not None:
        return f"normal, mean {num(s.normal.mean)}, std {num(s.normal.std)}, within [{num(s.normal.min)}, " \
               f"{num(s.normal.max)}]"
    low, high = s.uniform_int or s.uniform or (None, None)
    return f"from {num(low)} to {num(high)}"


def _stages(spec: JobSpec, stages: list[Stage]) -> str:
    rows, prompts = [], []
    for i, s in enumerate(stages):
        if isinstance(s, GenerateStage):
            what = "chat prompt" if s.messages else "text prompt"
            what += f", continues {code(s.continue_)}" if s.continue_ else ""
            what += f", {s.sampling.n} branches" if s.sampling.n and s.sampling.n > 1 else ""
            what += f", model {text(_model(spec, s.model, f'stages.{i}.model'))}" if isinstance(s.model, ModelSpec) \
                else ""
            prompts.append(f"Stage {code(s.name)}:\n\n{_prompt(s.text, s.messages)}")
        elif isinstance(s, JudgeStage):
            what = f"scores {code(s.judge)}, keeps scores of at least {s.min_score}"
        else:
            what = f"a preference pair of {code(s.select.of)}'s branches, ranked by {code(s.select.by)}"
        rows.append([code(s.name), s.kind, what])
    return "\n\n".join(["Stages, run in order on each row:", table(["stage", "kind", "what"], rows), *prompts])


def _gates(spec: JobSpec) -> list[str]:
    gates = []
    if spec.filters is not None:
        gates.append("filters: " + _filters(spec.filters))
    if spec.judge is not None:
        gates.append(_judge(spec, spec.judge))
    if spec.dedup is not None:
        near = spec.dedup.near_threshold
        gates.append("dedup: " + ("exact" if spec.dedup.exact else "")
                     + (f"{' and ' if spec.dedup.exact else ''}near (Jaccard ≥ {num(near)})" if near else "")
                     + f" on {code(spec.dedup.column)}")
    if spec.targets is not None:
        gates.append(f"targets: kept rows per stratum of {', '.join(code(b) for b in spec.targets.by)}, "
                     f"in at most {spec.targets.max_rounds} rounds")
    if spec.mix is not None:
        real = text(shown_path(spec, "mix.uri"))
        gates.append(f"mix: a `mixed/` split with {spec.mix.ratio:.0%} real rows from {real}")
    return gates


def _filters(f: Filters) -> str:
    bounds = [f"{name.replace('_', ' ')} {num(v)}" for name in ("min_chars", "max_chars", "min_tokens", "max_tokens")
              if (v := getattr(f, name)) is not None]
    patterns = [f"{kind} {', '.join(text(p, 40) for p in getattr(f, kind))}" for kind in ("deny", "allow")
                if getattr(f, kind)]
    checks = [name for name in ("refusal", "repetition") if getattr(f, name)]
    return "; ".join(bounds + patterns + checks + [f"filler {f.filler}"])


def _judge(spec: JobSpec, judge: Judge) -> str:
    model = "the job's model" if judge.model == "self" else text(_model(spec, judge.model, "judge.model"))
    low, high = judge.scale
    return f"judge: {model} scores each completion from {low} to {high}; rows under {judge.min_score} are rejected"
