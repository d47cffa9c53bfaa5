"""What one generation request is made of: chat messages and sampling settings.

A leaf of the spec layer: the job's prompt source, its stages and the engines all build on these.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StrictBool, StrictFloat, StrictInt, field_validator, model_validator

from orchestrator import defaults
from orchestrator.spec.model import Strict, invalid
from orchestrator.spec.samplers import Sampler, draw_bounds_problem, number_or_draw


def checked_schema(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """A pydantic field check: the value is a valid JSON schema (draft 2020-12), or None."""
    if schema is not None:
        import jsonschema

        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as e:
            raise ValueError(f"not a valid JSON schema: {e.message}") from None
    return schema


class Message(Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class Sampling(Strict):
    temperature: Annotated[float | Sampler, number_or_draw(Annotated[StrictFloat, Field(ge=0)])] = Field(
        1.0, description=("Or drawn per row: {uniform: [low, high]} or {normal: {mean, std, min, max}}; the "
                          "row's lineage records its draw."))
    top_p: Annotated[float | Sampler, number_or_draw(Annotated[StrictFloat, Field(gt=0, le=1)])] = Field(
        1.0, description="Or drawn per row, as temperature.")
    max_tokens: StrictInt = Field(defaults.MAX_TOKENS, ge=1, description="At most model.max_model_len.")
    n: StrictInt = Field(1, ge=1, description="Completions per prompt; each becomes its own row.")
    seed: StrictInt = Field(0, description="Base seed; each row's seed derives from it and the row.")
    stop: list[str] = Field(default_factory=list)
    ignore_eos: StrictBool = Field(False, description="Always generate max_tokens (benchmarks).")
    json_schema: dict[str, Any] | None = Field(
        None, description="Constrain completions to JSON valid against this schema."
    )
    _schema = field_validator("json_schema")(checked_schema)

    @model_validator(mode="after")
    def _draws_in_range(self) -> Sampling:
        problems = [((name,), problem) for name, high in (("temperature", None), ("top_p", 1.0))
                    if isinstance(draw := getattr(self, name), Sampler)
                    and (problem := draw_bounds_problem(draw, 0.0, high, name))]
        if problems:
            raise invalid("Sampling", problems)
        return self
