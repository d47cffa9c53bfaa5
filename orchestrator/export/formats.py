"""The lines `synthfleet export` writes, made from row dicts (as Arrow's `to_pylist` gives a job's rows):
one JSON object per line, UTF-8, keys in a fixed order and ids derived from row ids, so exporting a
job twice gives the same bytes.

- `jsonl`: every column of a kept row as stored (lineage an object; its `sampling` and `stages` stay
  the JSON text they are stored as).
- `chat`: `{"messages": [...]}`, the fine-tuning format of OpenAI and TRL: the prompt's messages (a
  text prompt as one user message), then the completion as the assistant's turn. In a job with
  stages `messages` already holds the last chat stage's whole conversation, reply included, and is
  written as it is; when the last stage is a text stage, its prompt and text make the two turns.
- `openai-batch`: the output and error files of OpenAI's Batch API. A request's kept samples (its
  data rows, `sampling.n` > 1 giving several) are the choices of one response: a `chat.completion`
  for chat rows, a `text_completion` for text prompts. A request none of whose samples was kept is
  one line of the error file when a sample failed (its first error), and is left out of both files
  when a gate rejected every sample (it was answered, then filtered). `custom_id` is the row's
  (an OpenAI Batch or prompt file's), else its row id.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]
OPENAI_BATCH, JSONL, CHAT = "openai-batch", "jsonl", "chat"
FORMATS = (OPENAI_BATCH, JSONL, CHAT)
BATCH_FILES = ("output.jsonl", "errors.jsonl")  # openai-batch: the output file and the error file


def dumps(obj: Any) -> bytes:
    """One line: compact JSON, UTF-8; a float that JSON cannot hold (NaN, infinity) as null."""
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(obj), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return (text + "\n").encode()


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


# --- jsonl and chat ---------------------------------------------------------------------------------

def jsonl_line(row: Row) -> bytes:
    return dumps(row)


def chat_messages(row: Row) -> list[dict[str, str]]:
    """The row as a conversation: what the model was asked, then its completion as the assistant's turn."""
    reply = {"role": "assistant", "content": row["completion"]}
    messages = row.get("messages")
    if messages is None:
        if row.get("prompt") is None:
            raise ValueError(f"row {row['row_id']} has neither a prompt nor messages")
        return [{"role": "user", "content": row["prompt"]}, reply]
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    staged = "stages" in (row.get("lineage") or {})
    return turns if staged and turns and turns[-1] == reply else [*turns, reply]


def chat_line(row: Row) -> bytes:
    return dumps({"messages": chat_messages(row)})


# --- openai-batch -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchContext:
    """What every response of a job shares: the model's name and `created`, when the job finished."""

    model: str
    created: int


def derived_id(prefix: str, row_id: str) -> str:
    """An OpenAI-style id (`batch_req_…`, `req_…`, `chatcmpl-…`, `cmpl-…`) that only the row id decides."""
    return prefix + hashlib.blake2b(f"{prefix}{row_id}".encode(), digest_size=16).hexdigest()


def custom_id(row: Row) -> str:
    return row["custom_id"] if row.get("custom_id") is not None else row["row_id"]


def _finish_reason(reason: str | None) -> str:
    """OpenAI's reason: `length` at max_tokens; any other end (end of sequence, a stop string) is `stop`."""
    return "length" if reason == "length" else "stop"


def _choice(row: Row, index: int, chat: bool) -> dict[str, Any]:
    reason = _finish_reason(row.get("finish_reason"))
    if chat:
        message = {"role": "assistant", "content": row["completion"], "refusal": None}
        return {"index": index, "message": message, "logprobs": None, "finish_reason": reason}
    return {"text": row["completion"], "index": index, "logprobs": None, "finish_reason": reason}


def response_body(samples: list[Row], ctx: BatchContext) -> dict[str, Any]:
    """The body OpenAI answers a request with: one choice per kept sample, in sample order (`index` is
    the place among them); usage counts the prompt once, as OpenAI does for `n` > 1."""
    samples = sorted(samples, key=lambda r: r.get("sample_index") or 0)
    first = samples[0]
    chat = first.get("messages") is not None
    prompt_tokens = first.get("prompt_tokens") or 0
    completion_tokens = sum(r.get("completion_tokens") or 0 for r in samples)
    return {
        "id": derived_id("chatcmpl-" if chat else "cmpl-", first["row_id"]),
        "object": "chat.completion" if chat else "text_completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": [_choice(r, i, chat) for i, r in enumerate(samples)],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        "system_fingerprint": (first.get("lineage") or {}).get("model_revision"),
    }


def batch_output_line(samples: list[Row], ctx: BatchContext) -> bytes:
    """A line of the output file: one request's kept samples (data rows of one row id) as its response."""
    row_id = samples[0]["row_id"]
    response = {"status_code": 200, "request_id": derived_id("req_", row_id), "body": response_body(samples, ctx)}
    return dumps({"id": derived_id("batch_req_", row_id), "custom_id": custom_id(samples[0]),
                  "response": response, "error": None})


def batch_error_line(failed: list[Row]) -> bytes:
    """A line of the error file: a request none of whose samples was kept, with its first error
    (a failure of the whole row, else its lowest sample's)."""
    first = min(failed, key=lambda r: -1 if r.get("sample_index") is None else r["sample_index"])
    return dumps({"id": derived_id("batch_req_", first["row_id"]), "custom_id": custom_id(first), "response": None,
                  "error": {"code": first["error_code"], "message": first["error_message"]}})


def requests(rows: Iterable[Row]) -> Iterator[list[Row]]:
    """A shard's rows grouped by request: the consecutive rows of one row id (a row's samples are stored
    together). A row id met again after another would make two responses: a ValueError."""
    seen: set[str] = set()
    group: list[Row] = []
    for row in rows:
        if group and row["row_id"] != group[0]["row_id"]:
            yield group
            group = []
        if not group:
            if row["row_id"] in seen:
                raise ValueError(f"row {row['row_id']}'s samples are not stored together")
            seen.add(row["row_id"])
        group.append(row)
    if group:
        yield group


def by_request(rows: Iterable[Row]) -> dict[str, list[Row]]:
    """Rows (a shard's error rows) by row id, in the order their ids first appear."""
    out: dict[str, list[Row]] = {}
    for row in rows:
        out.setdefault(row["row_id"], []).append(row)
    return out
