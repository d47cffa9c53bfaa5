"""Reading a spec: YAML or JSON text to a JobSpec, with one clear message per problem (field, line, fix).

Paths relative to the spec file resolve against its folder; duplicate keys, unknown fields and
wrong types are each reported with the field's dotted path and, for an unknown field, the nearest
name it could have meant.
"""

from __future__ import annotations

import difflib
import json
import os
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from orchestrator.errors import Problem, SpecError
from orchestrator.spec.job import JobSpec, field_value, is_relative_path, path_fields, replace_at
from orchestrator.spec.model import error_path


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, unions, lists and dicts)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The field names the model at `loc` (a pydantic error location, its last part excluded) accepts; of a
    union of models (a stage's kinds), the fields of each, first seen first; a field by its alias (`continue`)."""
    models: list[type[BaseModel]] = [JobSpec]
    for part in loc[:-1]:
        fields = [m.model_fields[part] for m in models if isinstance(part, str) and part in m.model_fields]
        inner = [m for f in fields for m in _models_in(f.annotation)]
        models = inner or models  # list indices and union tags leave the models as they are
    return list(dict.fromkeys(f.alias or name for m in models for name, f in m.model_fields.items()))


def _unknown_field(loc: tuple[Any, ...]) -> str:
    names = [n for n in _fields_at(loc) if n != "relative_to"]
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    if close:
        return f"unknown field; did you mean `{close[0]}`?"
    return f"unknown field; remove it or check its spelling (fields here: {', '.join(names)})"


_EXPECTED = {"int_type": "a whole number", "float_type": "a number", "bool_type": "true or false"}


def _shown(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _other_branch(loc: tuple[Any, ...], errors: list[Any]) -> bool:
    """An error against `"self"` where the value was plainly meant as a model (judge.model: {...})."""
    if not loc or not str(loc[-1]).startswith("literal["):
        return False
    return any(len(e["loc"]) > len(loc) and e["loc"][:len(loc) - 1] == loc[:-1] for e in errors)


def problems_from(error: ValidationError) -> list[Problem]:
    out = []
    errors = error.errors(include_url=False)
    for e in errors:
        if _other_branch(e["loc"], errors):
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = _unknown_field(e["loc"])
        elif e["type"] in _EXPECTED:  # strict fields: a bool or a string is not a number here
            msg = f"expected {_EXPECTED[e['type']]}, got {_shown(e['input'])}"
        out.append(Problem(error_path(e["loc"]), msg))
    return out


def parse_spec(data: Any, *, source: str = "spec") -> JobSpec:
    """Validate a mapping into a JobSpec, or raise SpecError listing every problem.

    Pure field checks only (no template is analysed or rendered, no file read), so it is cheap
    enough for the service's event loop; `orchestrator.run.preflight.check_spec` does the rest.
    """
    if not isinstance(data, dict):
        raise SpecError([Problem("", f"{source}: expected a mapping at the top level")])
    try:
        return JobSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(problems_from(e)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that repeats a key (plain YAML keeps the last silently,
    so a second `name:` would rename the job)."""

    source = "spec"

    def construct_document(self, node: yaml.Node) -> Any:
        problems = _duplicate_keys(node, self.source)
        if problems:
            raise SpecError(problems)
        return super().construct_document(node)


def _duplicate_keys(root: yaml.Node, source: str) -> list[Problem]:
    """A problem for each key repeated in a mapping, naming both lines; each node is visited once."""
    problems, seen_nodes, stack = [], set(), [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{path}.{i}".lstrip(".")) for i, item in enumerate(node.value))
        if not isinstance(node, yaml.MappingNode):
            continue
        lines: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            where, line = f"{path}.{key.value}".lstrip("."), key.start_mark.line + 1
            if (key.tag, key.value) in lines:
                problems.append(Problem(where, f"duplicate key {key.value!r} on lines {lines[key.tag, key.value]} "
                                               f"and {line} of {source}; YAML would keep only the last: remove one"))
            lines.setdefault((key.tag, key.value), line)
            stack.append((value, where))
    return sorted(problems, key=lambda p: p.message)


def _read_text(p: Path) -> str:
    """The spec file's text: UTF-8 (a BOM is dropped), or a SpecError saying what it is instead."""
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise SpecError([Problem("", f"cannot read spec file {p}: {e.strerror}")]) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        utf16 = raw[:2] in (b"\xff\xfe", b"\xfe\xff")
        what = "UTF-16 text" if utf16 else f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})"
        raise SpecError([Problem("", f"{p} is {what}; save it as UTF-8 YAML or JSON")]) from None


def _resolved(spec: JobSpec, folder: Path) -> JobSpec:
    """`spec` with each relative local path joined to `folder`, the text as written kept for the job id.

    The model path of the fake engine is a name, not a folder, and stays as it is.
    """
    data, written = spec.model_dump(), {}
    for field in path_fields(spec):
        value, model = field_value(spec, field), field_value(spec, field.rpartition(".")[0])
        if not isinstance(value, str) or not is_relative_path(value) or getattr(model, "engine", None) == "fake":
            continue
        written[field] = value
        replace_at(data, field.split("."), os.path.normpath(os.path.join(folder, value)))
    if not written:
        return spec
    data["relative_to"] = {"folder": str(folder), "written": written}
    return JobSpec.model_validate(data)


def load_yaml(p: Path) -> Any:
    """A YAML or JSON file's data (UTF-8, no repeated keys), or a SpecError naming the file and the fix."""
    loader = type("Loader", (_UniqueKeyLoader,), {"source": p.name})
    try:
        return yaml.load(_read_text(p), Loader=loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise SpecError([Problem("", f"{p} is not valid YAML or JSON: {e}")]) from None


def load_spec(path: str | Path) -> JobSpec:
    """Read a YAML or JSON spec file (JSON is YAML) and validate it.

    Relative paths to what the job reads (PATH_FIELDS: model.path, judge.model.path, prompts.file.uri,
    prompts.openai_batch.uri, quality.reference, mix.uri; and stages.N.model.path) resolve against the spec file's folder, as
    inputs in a docker-compose or kustomize file do, so the spec works from any working directory;
    see `SpecFolder` for the job id. output.uri, where the job writes, stays relative to the working
    directory like `--output` (and `..` stays refused in it).
    A spec that already carries `relative_to` (a job's spec.json) is taken as it is.
    """
    p = Path(path)
    spec = parse_spec(load_yaml(p), source=str(p))
    return spec if spec.relative_to is not None else _resolved(spec, p.absolute().parent)
