"""The models a server runs batches on: `serve --model NAME=PATH_OR_ID` (repeatable) or `--models FILE`.

A batch request's `body.model` names one of them. A models file maps each name to the parts of a job
spec a batch cannot give, and their defaults:

    tiny:
      model: {path: models/tiny, max_model_len: 512}   # as a spec's model section
      resources: {workers: 2, gpus_per_worker: 0}       # default: 1 worker, 1 GPU each on a GPU cluster
      sampling: {max_tokens: 512}                       # defaults a request's body overrides
      rows_per_shard: 64

Relative paths in it resolve against the file's folder, as a spec's do.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, StrictInt, ValidationError

from orchestrator import defaults
from orchestrator.errors import Problem, SpecError
from orchestrator.spec.generation import Sampling
from orchestrator.spec.job import Resources
from orchestrator.spec.load import load_yaml, problems_from
from orchestrator.spec.model import ModelSpec, Strict

NAME_HELP = "a model name has no spaces, '=' or '/' at its ends and is at most 256 characters"


class ServedModel(Strict):
    model: ModelSpec
    resources: Resources | None = Field(None, description="Unset: one worker, one GPU each when the cluster "
                                                          "has GPUs, else on CPUs.")
    sampling: Sampling = Sampling()
    rows_per_shard: StrictInt = Field(defaults.BATCH_ROWS_PER_SHARD, ge=1)

    def resources_on(self, has_gpus: bool) -> Resources:
        return self.resources or Resources(workers=1, gpus_per_worker=1.0 if has_gpus else 0.0)


def _checked_name(name: str, where: str) -> str:
    if not name or len(name) > 256 or name != name.strip() or any(c.isspace() for c in name) or "=" in name:
        raise SpecError([Problem(where, f"{name!r}: {NAME_HELP}")])
    return name


def model_option(value: str) -> tuple[str, ServedModel]:
    """`NAME=PATH_OR_ID`: a local folder (one that exists, or a path starting with `.` or `/`) or a hub id."""
    name, sep, target = value.partition("=")
    if not sep or not target:
        raise SpecError([Problem("--model", f"{value!r}: give NAME=PATH_OR_ID, e.g. --model tiny=models/tiny")])
    local = os.path.isdir(target) or target.startswith((".", "/"))
    model = ModelSpec(path=os.path.abspath(target)) if local else ModelSpec(id=target)
    return _checked_name(name, "--model"), ServedModel(model=model)


def models_file(path: str | Path) -> dict[str, ServedModel]:
    """A models file's entries, every problem named by its `NAME.field` path (a SpecError)."""
    p = Path(path)
    data = load_yaml(p)
    if not isinstance(data, dict) or not data:
        raise SpecError([Problem("", f"{p}: a models file maps model names to {{model: ..., resources: ...}}")])
    served, problems = {}, []
    for name, entry in data.items():
        try:
            model = ServedModel.model_validate(entry)
            _checked_name(str(name), str(name))
        except ValidationError as e:
            problems += [Problem(f"{name}.{q.path}".rstrip("."), q.message) for q in problems_from(e)]
            continue
        except SpecError as e:
            problems += e.problems
            continue
        if model.model.path is not None and not os.path.isabs(model.model.path):
            spec = model.model.model_copy(update={"path": os.path.normpath(p.absolute().parent / model.model.path)})
            model = model.model_copy(update={"model": spec})
        served[str(name)] = model
    if problems:
        raise SpecError([Problem(f"{p}: {q.path}" if q.path else str(p), q.message) for q in problems])
    return served


def served_models(options: list[str], file: str | None) -> dict[str, ServedModel]:
    """The models of `--model` options and a `--models` file; a name given twice is a SpecError."""
    served = models_file(file) if file else {}
    for value in options:
        name, model = model_option(value)
        if name in served:
            raise SpecError([Problem("--model", f"the model name {name!r} is given twice")])
        served[name] = model
    return served
