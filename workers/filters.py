"""Checks on generated text that send a completion to `errors/` instead of the data."""

from __future__ import annotations

import functools
import json
from typing import Any

import jsonschema


@functools.lru_cache(maxsize=64)
def _validator(schema_json: str) -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(json.loads(schema_json))


def schema_violation(schema: dict[str, Any], text: str) -> str | None:
    """Why `text` is not JSON valid against `schema`, or None when it is."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return f"completion is not valid JSON: {e}"
    error = jsonschema.exceptions.best_match(
        _validator(json.dumps(schema, sort_keys=True)).iter_errors(value))
    return None if error is None else f"completion violates the schema at {error.json_path}: {error.message}"
