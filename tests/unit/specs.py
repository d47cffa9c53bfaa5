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
