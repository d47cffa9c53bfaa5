"""Preflight: every check a spec must pass before any worker starts or any byte is written."""

from __future__ import annotations

from pathlib import Path

from jinja2 import TemplateSyntaxError

from orchestrator.errors import Problem, SpecError, StorageError
from orchestrator.rows import reserved_name_problems
from orchestrator.spec import JobSpec
from orchestrator.storage import open_store, split_uri
from workers.prompts import undeclared_variables


def _template_problems(spec: JobSpec) -> list[Problem]:
    source = spec.prompts.template
    if source is None:
        return []
    where = ["prompts.template.text"] if source.text is not None else [
        f"prompts.template.messages.{i}.content" for i in range(len(source.messages or []))]
    texts = [source.text] if source.text is not None else [m.content for m in source.messages or []]
    problems = []
    for path, text in zip(where, texts, strict=True):
        try:
            missing = sorted(undeclared_variables(text) - set(source.seeds))
        except TemplateSyntaxError as e:
            problems.append(Problem(path, f"template syntax error on line {e.lineno}: {e.message}"))
            continue
        known = ", ".join(sorted(source.seeds)) or "none"
        problems += [Problem(path, f"variable {name!r} is not among the seeds ({known}); add it to "
                                   "prompts.template.seeds or remove it from the template") for name in missing]
    return problems + reserved_name_problems(spec)


def _input_problems(spec: JobSpec) -> list[Problem]:
    p = spec.prompts
    inputs = [("prompts.file.uri", p.file.uri) if p.file else (
        ("prompts.openai_batch.uri", p.openai_batch.uri) if p.openai_batch else (None, None)),
        ("quality.reference", spec.quality.reference), ("mix.uri", spec.mix.uri if spec.mix else None)]
    problems = [problem for path, uri in inputs if path and uri for problem in _file_problems(path, uri)]
    if p.openai_batch and p.openai_batch.uri.lower().endswith(".parquet"):
        problems.append(Problem("prompts.openai_batch.uri", "an OpenAI Batch input file is JSONL"))
    return problems


def _file_problems(path: str, uri: str) -> list[Problem]:
    if not uri.lower().endswith((".jsonl", ".json", ".parquet")):
        return [Problem(path, f"{uri}: expected a .jsonl or .parquet file")]
    try:
        store, key = split_uri(uri)
        if store.size(key) is None:
            return [Problem(path, f"input file {uri} does not exist")]
        store.get_range(key, 0, 1)
    except (StorageError, OSError) as e:
        return [Problem(path, f"cannot read input file {uri}: {e}")]
    return []


def _model_problems(spec: JobSpec) -> list[Problem]:
    models = [("model.path", spec.model)]
    if spec.judge is not None and spec.judge.model != "self":
        models.append(("judge.model.path", spec.judge.model))
    problems = []
    for field, model in models:
        if model.path is None or model.engine == "fake":
            continue
        path = Path(model.path)
        if not path.is_dir():
            problems.append(Problem(field, f"{path} is not a folder; give a local model folder or use model.id "
                                    "for a hub model (`synthfleet make-tiny-model DIR` builds a demo one)"))
        elif not (path / "config.json").is_file():
            problems.append(Problem(field, f"{path} has no config.json; is it a Hugging Face model folder?"))
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
    problems = (_template_problems(spec) + _input_problems(spec) + _model_problems(spec)
                + _resource_problems(spec))
    return problems + (_output_problems(spec) if check_output else [])


def check_spec(spec: JobSpec, *, check_output: bool = True) -> None:
    problems = spec_problems(spec, check_output=check_output)
    if problems:
        raise SpecError(problems)
