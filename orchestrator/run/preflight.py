"""Preflight: every check a spec must pass before any worker starts or any byte is written.

`spec_problems` lists what stops the job, each with its field path; `spec_warnings` what is
probably a mistake yet can run (validate and run print them). Templates are analysed and their
first rows rendered in the bounded sandbox under a time limit, so no template hangs this.
"""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path
from typing import Any

from jinja2 import TemplateSyntaxError

from orchestrator import defaults
from orchestrator.commit.schemas import reserved_name_problems
from orchestrator.errors import Problem, SpecError, StorageError
from orchestrator.plan.planner import template_variables
from orchestrator.plan.seed_files import columns_problem, first_record
from orchestrator.run.input_checks import Source, file_findings
from orchestrator.spec.job import JobSpec, TemplateSource
from orchestrator.spec.model import ModelSpec
from orchestrator.spec.stages import GenerateStage, JudgeStage, stage_reads
from orchestrator.storage import open_store, split_uri
from orchestrator.storage.reader import open_input
from workers import sandbox, template_checks
from workers.prompts import FILE_COLUMNS, undeclared_variables

# config.json keys vLLM reads a model's context from (the smallest present wins)
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_target_positions",
                "max_sequence_length", "max_seq_length", "seq_len")


def _template_fields(source: TemplateSource) -> list[tuple[str, str]]:
    """(field path, template text) of each template of the source."""
    if source.text is not None:
        return [("prompts.template.text", source.text)]
    return [(f"prompts.template.messages.{i}.content", m.content) for i, m in enumerate(source.messages or [])]


def _analysed(source: TemplateSource) -> tuple[dict[str, set[str]], list[Problem]]:
    """The variables each template reads, by field, and the problems of those that cannot be analysed."""
    read, problems = {}, []
    for path, text in _template_fields(source):
        try:
            read[path] = undeclared_variables(text)
        except TemplateSyntaxError as e:
            problems.append(Problem(path, f"template syntax error on line {e.lineno}: {e.message}"))
        except Exception as e:  # noqa: BLE001 - a time limit, a recursion limit: the template is unusable
            problems.append(Problem(path, f"the template cannot be analysed ({type(e).__name__}: {e}); simplify it"))
    return read, problems


def _template_problems(spec: JobSpec) -> list[Problem]:
    source = spec.prompts.template
    if source is None:
        return []
    if spec.stages is not None:  # what stages read was checked as the spec was parsed (spec/stage_checks.py)
        return reserved_name_problems(spec)
    read, problems = _analysed(source)
    known = ", ".join(sorted(source.seeds)) or "none"
    for path, names in read.items():
        problems += [Problem(path, f"variable {name!r} is not among the seeds ({known}); add it to "
                                   "prompts.template.seeds or remove it from the template")
                     for name in sorted(names - set(source.seeds))]
    if not problems:
        problems += _render_problems(source)
    return problems + reserved_name_problems(spec)


def _first_rows(source: TemplateSource) -> list[int]:
    return list(range(min(defaults.TEMPLATE_CHECK_ROWS, source.total_rows)))


def _seed_previews(source: TemplateSource) -> dict[str, Any]:
    """Each `from_file` variable as the first row of its file (its named columns), for rendering checks
    (the rows a job draws need its plan; they have the same columns)."""
    return {name: first_record(s.from_file) for name, s in source.sampled().items() if s.from_file is not None}


def _variables(source: TemplateSource, row: int, previews: dict[str, Any]) -> dict[str, Any]:
    return template_variables(source, row) | previews


def _render_failures(source: TemplateSource) -> list[tuple[int, sandbox.RenderError]]:
    """(row, failure) of each of the first rows that does not render, exactly as the workers render it."""
    texts, previews = [text for _, text in _template_fields(source)], _seed_previews(source)
    failures = []
    for row in _first_rows(source):
        try:
            sandbox.render_all(texts, _variables(source, row, previews))
        except sandbox.RenderError as e:
            failures.append((row, e))
    return failures


def _checked_renders(source: TemplateSource) -> list[tuple[int, sandbox.RenderError]]:
    """`_render_failures` under the template time limit; a render past it fails every row."""
    try:
        return template_checks.within(defaults.TEMPLATE_CHECK_S, "rendering the first rows", _render_failures, source)
    except sandbox.TemplateTimeout as e:
        return [(row, sandbox.RenderError(0, e)) for row in _first_rows(source)]


def _render_problems(source: TemplateSource) -> list[Problem]:
    """A template that fails on every row checked would fail the whole job: refuse it, on its field."""
    rows, failures = _first_rows(source), _checked_renders(source)
    if not rows or len(failures) < len(rows):
        return []
    row, failure = failures[0]
    path = _template_fields(source)[failure.index][0]
    which = "the first row" if len(rows) == 1 else f"each of the first {len(rows)} rows"
    return [Problem(path, f"the template fails on {which} ({failure}; row {row}: "
                          f"{json.dumps(_variables(source, row, _seed_previews(source)), default=str)}); "
                          "fix the template")]


def _unused(source: TemplateSource, used: set[str], by: str) -> list[Problem]:
    parents = {s.conditional.on for s in source.sampled().values() if s.conditional is not None}
    unused = sorted(name for name in source.seeds if name not in used | parents)
    return [Problem(f"prompts.template.seeds.{name}", f"seed variable {name!r} is never used by {by}: " + (
        f"its {len(values)} values only repeat identical prompts ({len(values)}x the rows)"
        if isinstance(values := source.seeds[name], list) else f"its {values.kind} draws change no prompt")
        + f"; use it in {by} or remove it") for name in unused]


def _stage_warnings(spec: JobSpec, source: TemplateSource) -> list[Problem]:
    used = {r.name for s in spec.stages or [] for r in stage_reads(s)}
    used |= {name for s in spec.stages or [] for name in s.links().values()}
    return _unused(source, used, "any stage")


def _template_warnings(spec: JobSpec) -> list[Problem]:
    source = spec.prompts.template
    if source is None:
        return []
    if spec.stages is not None:
        return _stage_warnings(spec, source)
    read, problems = _analysed(source)
    if problems:
        return []
    warnings = _unused(source, set().union(*read.values()), "the template")
    failures = _checked_renders(source)
    if failures and len(failures) < len(_first_rows(source)):
        row, failure = failures[0]
        warnings.append(Problem(_template_fields(source)[failure.index][0], f"row {row} fails to render: {failure}"))
    return warnings


def _sources(spec: JobSpec) -> list[Source]:
    p, sources = spec.prompts, []
    if p.file is not None:
        sources.append(Source("prompts.file.uri", p.file.uri, "prompts"))
    if p.openai_batch is not None:
        sources.append(Source("prompts.openai_batch.uri", p.openai_batch.uri, "batch"))
    if spec.quality.reference is not None:
        sources.append(Source("quality.reference", spec.quality.reference, "real", strict=True))
    if spec.mix is not None:
        sources.append(Source("mix.uri", spec.mix.uri, "real", strict=True))
    return sources


def _existence_problems(source: Source) -> list[Problem]:
    if not source.uri.lower().endswith((".jsonl", ".json", ".parquet")):
        return [Problem(source.field, f"{source.uri}: expected a .jsonl or .parquet file")]
    try:
        store, key = split_uri(source.uri)
        if store.size(key) is None:
            return [Problem(source.field, f"input file {source.uri} does not exist")]
        store.get_range(key, 0, 1)
    except (StorageError, OSError) as e:
        return [Problem(source.field, f"cannot read input file {source.uri}: {e}")]
    return []


def _input_problems(spec: JobSpec) -> list[Problem]:
    problems = []
    for source in _sources(spec):
        problems += _existence_problems(source) or file_findings(source).problems
    return problems + _seed_file_problems(spec)


def _seed_file_problems(spec: JobSpec) -> list[Problem]:
    """A `from_file` seed file must exist and have the columns it names (its row count is checked by the plan)."""
    template, problems = spec.prompts.template, []
    for name, s in sorted(template.sampled().items()) if template is not None else []:
        if s.from_file is None:
            continue
        field = f"prompts.template.seeds.{name}.from_file"
        if found := _existence_problems(Source(f"{field}.uri", s.from_file.uri, "seeds")):
            problems += found
            continue
        columns = _file_columns(s.from_file.uri)
        if columns is None:
            problems.append(Problem(f"{field}.uri", f"cannot read the first rows of {s.from_file.uri} as JSON objects"))
        elif problem := columns_problem(name, s.from_file, columns):
            problems.append(problem)
    return problems


def _input_warnings(spec: JobSpec) -> list[Problem]:
    return [w for s in _sources(spec) if not _existence_problems(s)
            for w in file_findings(s, whole_file=False).warnings]


def _file_columns(uri: str) -> set[str] | None:
    """The columns of a prompt file: its Parquet schema, or the keys of its first JSONL rows (None: unreadable)."""
    try:
        with open_input(uri) as f:
            if uri.lower().endswith(".parquet"):
                import pyarrow.parquet as pq

                return set(pq.ParquetFile(f).schema_arrow.names)
            lines = list(islice((line for line in f if line.strip()), defaults.INPUT_CHECK_LINES))
        records = [json.loads(line) for line in lines]
    except (StorageError, OSError, ValueError):  # _input_problems says what is wrong with the file
        return None
    return {str(k) for r in records if isinstance(r, dict) for k in r}


def _reference_problems(spec: JobSpec) -> list[Problem]:
    """judge.reference names where each row's reference answer is: a seed variable or a prompt file column."""
    name, prompts = spec.judge.reference if spec.judge else None, spec.prompts
    if name is None:
        return []
    what = "name the one that holds each row's reference answer"
    if prompts.template is not None:
        known = ", ".join(sorted(prompts.template.seeds)) or "none"
        return [] if name in prompts.template.seeds else [
            Problem("judge.reference", f"{name!r} is not a seed variable (seeds: {known}); {what}")]
    if prompts.file is None:
        return [Problem("judge.reference", "an OpenAI Batch file has no column for a reference answer; use "
                                           "prompts.file with a reference column, or a template seed")]
    if name in FILE_COLUMNS:
        return [Problem("judge.reference", f"{name!r} is the prompt file's own {name}; name another column")]
    columns = _file_columns(prompts.file.uri)
    if columns is None or name in columns:
        return []
    return [Problem("judge.reference", f"{name!r} is not a column of {prompts.file.uri} (its first rows have: "
                                       f"{', '.join(sorted(columns)) or 'none'}); {what}")]


def _models(spec: JobSpec) -> list[tuple[str, ModelSpec, int | None, str]]:
    """(field, model, max_tokens asked of it, the max_tokens field) of each model the job runs."""
    models: list[tuple[str, ModelSpec, int | None, str]] = []
    if spec.stages is None:
        models.append(("model", spec.model, spec.sampling.max_tokens, "sampling.max_tokens"))
    else:
        models.append(("model", spec.model, None, ""))
        for i, s in enumerate(spec.stages):
            model = s.model if isinstance(s, GenerateStage | JudgeStage) else "self"
            field = f"stages.{i}.model" if isinstance(model, ModelSpec) else "model"
            if isinstance(s, GenerateStage):
                models.append((field, spec.model if model == "self" else model, s.sampling.over(spec.sampling).max_tokens,
                               f"stages.{i}.sampling.max_tokens"))
            elif field != "model":
                models.append((field, model, None, ""))  # type: ignore[arg-type]
    if spec.judge is not None and not isinstance(spec.judge.model, str):
        models.append(("judge.model", spec.judge.model, None, ""))
    return models


def _config(model: ModelSpec) -> dict[str, Any] | None:
    """A local model folder's config.json (its text part for multimodal models), or None."""
    try:
        config = json.loads((Path(str(model.path)) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("text_config", config) if isinstance(config, dict) else None


def _context(config: dict[str, Any]) -> tuple[str, int] | None:
    """(key, tokens) of the model's own context, as vLLM derives it; None when RoPE scaling stretches it."""
    if config.get("rope_scaling") or config.get("rope_parameters"):
        return None
    found = [(config[k], k) for k in CONTEXT_KEYS if isinstance(config.get(k), int) and config[k] > 0]
    return (min(found)[1], min(found)[0]) if found else None


def _folder_problems(field: str, model: ModelSpec) -> list[Problem]:
    path = Path(str(model.path))
    if not path.is_dir():
        return [Problem(f"{field}.path", f"{path} is not a folder; give a local model folder or use model.id "
                                         "for a hub model (`synthfleet make-tiny-model DIR` builds a demo one)")]
    if not (path / "config.json").is_file():
        return [Problem(f"{field}.path", f"{path} has no config.json; is it a Hugging Face model folder?")]
    if _config(model) is None:
        return [Problem(f"{field}.path", f"{path}/config.json is not a JSON object")]
    return []


def _length_problems(field: str, model: ModelSpec, max_tokens: int | None, tokens_field: str) -> list[Problem]:
    """max_tokens <= max_model_len <= the model's own context, each saying which to lower."""
    config = _config(model) if model.path is not None and model.engine != "fake" else None
    context = _context(config) if config else None
    problems = []
    if context and model.max_model_len is not None and model.max_model_len > context[1]:
        problems.append(Problem(f"{field}.max_model_len", f"{model.max_model_len} exceeds the model's context "
                                f"({context[0]}={context[1]} in its config.json); lower {field}.max_model_len "
                                f"to at most {context[1]}"))
    bound = (f"{field}.max_model_len={model.max_model_len}" if model.max_model_len is not None else
             f"the model's context ({context[0]}={context[1]} in its config.json)" if context else None)
    limit = model.max_model_len if model.max_model_len is not None else (context[1] if context else None)
    if max_tokens is not None and limit is not None and max_tokens > limit:
        problems.append(Problem(tokens_field, f"{max_tokens} exceeds {bound}: lower {tokens_field}"
                                + (f" or raise {field}.max_model_len" if model.max_model_len is not None else "")))
    return problems


def _model_problems(spec: JobSpec) -> list[Problem]:
    problems: list[Problem] = []
    checked: set[str] = set()
    for field, model, max_tokens, tokens_field in _models(spec):
        if model.path is not None and model.engine != "fake" and field not in checked:
            problems += _folder_problems(field, model)
        problems += [p for p in _length_problems(field, model, max_tokens, tokens_field)
                     if field not in checked or p.path == tokens_field]
        checked.add(field)
    return problems


def _resource_problems(spec: JobSpec) -> list[Problem]:
    gpus, tp = spec.resources.gpus_per_worker, spec.model.tensor_parallel_size
    if gpus and gpus < tp:
        return [Problem("resources.gpus_per_worker",
                        f"{gpus:g} GPUs per worker cannot hold tensor_parallel_size={tp}; set it to {tp}")]
    return []


def _output_problems(spec: JobSpec) -> list[Problem]:
    try:
        open_store(spec.output.uri).check_writable()
    except StorageError as e:
        return [Problem("output.uri", str(e))]
    return []


def spec_problems(spec: JobSpec, *, check_output: bool = True) -> list[Problem]:
    """Every problem found, each with its field path; empty when the job can start."""
    problems = (_template_problems(spec) + _input_problems(spec) + _reference_problems(spec)
                + _model_problems(spec) + _resource_problems(spec))
    return problems + (_output_problems(spec) if check_output else [])


def spec_warnings(spec: JobSpec) -> list[Problem]:
    """What can run but is probably a mistake: an unused seed variable, some first rows failing."""
    return _template_warnings(spec) + _input_warnings(spec)


def check_spec(spec: JobSpec, *, check_output: bool = True) -> None:
    problems = spec_problems(spec, check_output=check_output)
    if problems:
        raise SpecError(problems)
