"""Seed samplers: template variables drawn per row rather than listed for the product.

A seed variable is either a list (a factor of the product, as always) or one sampler:

    weighted:     {value: weight, ...}                   a categorical draw, weights need not sum to 1
    conditional:  {on: parent, values: {p: [...] | {value: weight}}}   drawn given the parent's value
    uniform_int:  [low, high]                            an integer, both ends included
    uniform:      [low, high]                            a float strictly between low and high
    normal:       {mean, std, min, max}                  a float; min/max truncate (never clip)
    choice:       {values: [...], k: K}                  K distinct values (a list, in the values' order)
    from_file:    {uri, columns: [...], replace: false}  a row of a JSONL or Parquet seed file (its named
                                                         columns, a mapping), drawn without replacement
                                                         unless `replace`; streamed (orchestrator/plan/seed_files.py)

The same shapes (uniform, normal) draw a row's `sampling.temperature` or `sampling.top_p`. How the
values are drawn, deterministically from the row, is `orchestrator/plan/draws.py`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    TypeAdapter,
    field_validator,
    model_validator,
)

from orchestrator.spec.model import Strict, invalid
from orchestrator.spec.quality import checked_uri

Weight = Annotated[StrictFloat | StrictInt, Field(gt=0)]
Number = StrictFloat | StrictInt
MAX_CATEGORIES = 10_000  # a uniform_int with at most this many values is categorical (a parent, drift)
KINDS = ("weighted", "conditional", "uniform_int", "uniform", "normal", "choice", "from_file")


def category_key(value: Any) -> str:
    """How a parent's value names its entry in `conditional.values`: itself if text, else its JSON."""
    return value if isinstance(value, str) else json.dumps(value)


class Conditional(Strict):
    @model_validator(mode="before")
    @classmethod
    def _yaml_keys(cls, data: Any) -> Any:
        """YAML 1.1 reads a bare `on:` key as true: take it as the `on` it was written as. A parent value
        written as a YAML number or boolean (`1: [easy]`) is keyed by its JSON text, as `category_key` does."""
        if not isinstance(data, dict):
            return data
        if True in data and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        if isinstance(values := data.get("values"), dict):
            data = {**data, "values": {category_key(k): v for k, v in values.items()}}
        return data

    on: str = Field(..., description="The variable (listed or sampled) this one depends on.")
    values: dict[str, list[Any] | dict[str, StrictFloat | StrictInt]] = Field(..., min_length=1, description=(
        "Per value of the parent (its JSON text unless a string): the values to draw from, uniformly, "
        "or {value: weight}."))

    @model_validator(mode="after")
    def _non_empty(self) -> Conditional:
        empty = [k for k, v in self.values.items() if not v]
        if empty:
            raise ValueError(f"conditional.values.{empty[0]} has no values")
        bad = [(("values", parent, value), f"weight {weight} is not positive; give a number above 0 (or leave "
                                           "the value out)")
               for parent, entry in self.values.items() if isinstance(entry, dict)
               for value, weight in entry.items() if not weight > 0]
        if bad:  # checked here, not by the type: a union's failure is one message per member
            raise invalid("Conditional", bad)
        return self


class Normal(Strict):
    mean: Number
    std: Annotated[Number, Field(gt=0)]
    min: Number | None = Field(None, description="Truncate below (the distribution conditioned on the bounds).")
    max: Number | None = Field(None, description="Truncate above.")

    @model_validator(mode="after")
    def _bounds(self) -> Normal:
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"normal.min ({self.min}) must be below normal.max ({self.max})")
        return self


class Choice(Strict):
    values: list[Any] = Field(..., min_length=1)
    k: StrictInt = Field(..., ge=1, description="How many distinct values each row gets.")

    @model_validator(mode="after")
    def _k_fits(self) -> Choice:
        if self.k > len(self.values):
            raise ValueError(f"choice.k={self.k} exceeds its {len(self.values)} values")
        if len({json.dumps(v, sort_keys=True) for v in self.values}) < len(self.values):
            raise ValueError("choice.values repeat a value; give each once")
        return self


class FromFile(Strict):
    uri: str = Field(..., description="A JSONL or Parquet seed dataset, local or s3://.")
    columns: list[str] = Field(..., min_length=1, description="Its columns the variable holds (`{{ var.column }}`).")
    replace: StrictBool = Field(False, description="Draw rows with replacement (rows may then exceed the file's).")
    _uri = field_validator("uri")(checked_uri)

    @field_validator("uri")
    @classmethod
    def _format(cls, uri: str) -> str:
        if not uri.lower().endswith((".jsonl", ".json", ".parquet")):
            raise ValueError(f"{uri}: a seed file is .jsonl or .parquet")
        return uri

    @field_validator("columns")
    @classmethod
    def _distinct(cls, columns: list[str]) -> list[str]:
        if len(set(columns)) < len(columns):
            raise ValueError("columns repeat a name; give each once")
        return columns


class Sampler(Strict):
    """Exactly one of the sampler kinds (see the module docstring)."""

    weighted: dict[str, Weight] | None = Field(None, min_length=1)
    conditional: Conditional | None = None
    uniform_int: tuple[StrictInt, StrictInt] | None = None
    uniform: tuple[Number, Number] | None = None
    normal: Normal | None = None
    choice: Choice | None = None
    from_file: FromFile | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Sampler:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one sampler of {', '.join(KINDS)}" + (f" (got {', '.join(given)})"
                                                                                  if given else ""))
        for kind in ("uniform_int", "uniform"):
            bounds = getattr(self, kind)
            if bounds is not None and bounds[0] > bounds[1]:
                raise ValueError(f"{kind}: low ({bounds[0]}) is above high ({bounds[1]})")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    def categories(self) -> list[Any] | None:
        """Every value it can give, in order, if it is categorical (a parent for conditionals, a
        stratum for drift); None for continuous draws and `choice` (a list per row)."""
        if self.weighted is not None:
            return list(self.weighted)
        if self.conditional is not None:
            seen: dict[str, Any] = {}
            for entry in self.conditional.values.values():
                for v in entry:
                    seen.setdefault(json.dumps(v, sort_keys=True), v)
            return list(seen.values())
        if self.uniform_int is not None and self.uniform_int[1] - self.uniform_int[0] < MAX_CATEGORIES:
            return list(range(self.uniform_int[0], self.uniform_int[1] + 1))
        return None

    def output_values(self) -> list[Any] | None:
        """Values whose types decide the column's type; None for a float column."""
        if self.choice is not None:
            return self.choice.values
        if self.from_file is not None:  # a mapping per row: JSON text
            return [{}]
        if self.uniform_int is not None:
            return [0]
        return self.categories() if self.uniform is None and self.normal is None else None


def draw_bounds_problem(draw: Sampler, low: float, high: float | None, name: str) -> str | None:
    """A sampling parameter drawn per row: a uniform or a bounded normal within [low, high]."""
    if draw.uniform is not None:
        lo, hi = draw.uniform
    elif draw.normal is not None:
        lo, hi = draw.normal.min, draw.normal.max
        if lo is None or (high is not None and hi is None):
            return f"a normal {name} needs min{'' if high is None else ' and max'} within [{low}, {high or 'inf'}]"
    else:
        return f"{name} is drawn by uniform or normal, not {draw.kind}"
    if lo < low or (high is not None and hi is not None and hi > high):
        return f"{name} draws must stay within [{low}, {high if high is not None else 'inf'}]"
    return None


def _seed(value: Any) -> Any:
    """A seed variable: a list of values, or a mapping validated as one sampler."""
    if isinstance(value, dict):
        return Sampler.model_validate(value)
    if not isinstance(value, list | Sampler):
        raise ValueError(f"give a list of values or one sampler ({', '.join(KINDS)})")  # noqa: TRY004 - pydantic's
    return value


Seed = Annotated[list[Any] | Sampler, BeforeValidator(_seed)]


def number_or_draw(number: Any) -> BeforeValidator:
    """A sampling parameter: a number (validated as `number`, an annotated float) or a sampler drawn per row."""
    adapter = TypeAdapter(number)

    def check(value: Any) -> Any:
        return Sampler.model_validate(value) if isinstance(value, dict) else (
            value if isinstance(value, Sampler) else adapter.validate_python(value))
    return BeforeValidator(check)
