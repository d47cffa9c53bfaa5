"""Small spec builders shared by the unit tests (not a test module)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from orchestrator.spec.job import JobSpec
from orchestrator.spec.load import parse_spec


def spec_data(out: str | Path = "out", **sections: Any) -> dict[str, Any]:
    """A valid spec mapping on a hub model id; `sections` replaces top-level sections."""
    data: dict[str, Any] = {
        "name": "unit",
        "model": {"id": "org/model"},
        "prompts": {"template": {"text": "Say {{ word }}", "seeds": {"word": ["a", "b", "c"]}}},
        "sampling": {"max_tokens": 8, "seed": 1},
        "output": {"uri": str(out), "rows_per_shard": 2},
    }
    data.update(copy.deepcopy(sections))
    return data


def make_spec(out: str | Path = "out", **sections: Any) -> JobSpec:
    return parse_spec(spec_data(out, **sections))


def template_spec(seeds: dict[str, list[Any]], *, text: str = "x", sample: dict[str, int] | None = None,
                  rows_per_shard: int = 2, out: str | Path = "out") -> JobSpec:
    template: dict[str, Any] = {"text": text, "seeds": seeds}
    if sample is not None:
        template["sample"] = sample
    return make_spec(out, prompts={"template": template},
                     output={"uri": str(out), "rows_per_shard": rows_per_shard})


def file_spec(uri: str, *, rows_per_shard: int = 2, kind: str = "file", **sections: Any) -> JobSpec:
    return make_spec(prompts={kind: {"uri": uri}}, output={"uri": "out", "rows_per_shard": rows_per_shard},
                     **sections)


STAGE_SEEDS = {"topic": ["tides", "rust"], "audience": ["kids", "experts"]}


def staged_data(*stages: dict[str, Any], seeds: dict[str, list[Any]] | None = None, **sections: Any) -> dict[str, Any]:
    """A spec mapping whose rows (the product of `seeds`, default STAGE_SEEDS) run `stages`; `sections`
    replaces top-level sections (prompts included)."""
    prompts = {"template": {"seeds": STAGE_SEEDS if seeds is None else seeds}}
    return spec_data(**{"prompts": prompts, "stages": list(stages), **sections})


def make_staged(*stages: dict[str, Any], seeds: dict[str, list[Any]] | None = None, **sections: Any) -> JobSpec:
    return parse_spec(staged_data(*stages, seeds=seeds, **sections))


def generate(name: str, text: str = "Write about {{ topic }}.", **fields: Any) -> dict[str, Any]:
    """A generate stage prompted by `text`, or by `messages` when given instead."""
    return {"name": name, **({} if "messages" in fields else {"text": text}), **fields}


def chat(name: str, content: str = "Write about {{ topic }}.", **fields: Any) -> dict[str, Any]:
    """A generate stage whose prompt is one user message."""
    return {"name": name, "messages": [{"role": "user", "content": content}], **fields}


def judge_stage(name: str, judged: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "judge": judged, **fields}


def select_stage(name: str, by: str, of: str) -> dict[str, Any]:
    return {"name": name, "select": {"by": by, "of": of}}
