"""The inference engine adapter: the only module that imports vLLM (lazily).

Errors are split where they arise: a request the engine rejects (prompt too long, bad params)
is a per-row `RowFailure`; an engine that died raises `EngineDeadError` so the coordinator replaces
the worker and retries the shard elsewhere.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jinja2

from orchestrator import defaults
from orchestrator.errors import EngineDeadError, RowErrorCode
from orchestrator.spec.job import Sampling
from orchestrator.spec.model import ModelSpec
from workers.prompts import PromptRow, RowFailure


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV the engine already held (prefix cache)
    follow_up_ids: list[int] | None = None  # the conversation continued by a follow-up turn, when asked


@dataclass(frozen=True)
class EngineInfo:
    model: str
    revision: str
    load_seconds: float
    max_model_len: int


class Engine(Protocol):
    info: EngineInfo
    requests: int

    async def generate(self, row: PromptRow, follow_up: str | None = None) -> list[Completion] | RowFailure:
        """The row's completions; with `follow_up`, each also carries the token ids of its conversation
        continued by a user turn `follow_up`, or as it stands for `SAME_TURN` (None when the engine cannot
        say: ask in words instead). A row of token ids continues them with its `messages` (user turns) or
        its `prompt` (text in the same turn)."""
        ...


SAME_TURN = ""  # a follow-up that adds nothing: the conversation's ids as they stand (prompt, then reply)


def weights_fingerprint(path: str) -> str:
    """Identity of local weights: config plus names, sizes and first MiB of every weight file.

    Hashing a 100 GB checkpoint would take minutes; this catches any real change in seconds.
    """
    root, h = Path(path), hashlib.sha256()
    for f in sorted(root.iterdir()):
        if f.is_file() and f.suffix in (".json", ".safetensors", ".bin", ".pt", ".model"):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
            with open(f, "rb") as fh:
                h.update(fh.read(1 << 20))
    return "sha256:" + h.hexdigest()[:16]


GIB = 1 << 30


def cpu_kv_cache_bytes(available: int) -> int:
    """The CPU backend's KV cache for a NUMA node with `available` bytes free or reclaimable: a share
    of it, bounded (defaults.CPU_KV_CACHE_*), and never more than half of it, so the weights and the
    engine's own memory still fit. The engine's RSS is not subtracted: it is already outside
    `available`. (vLLM's rule, utilization x node *total* - RSS, is negative on a 10 GiB node.)"""
    share = defaults.CPU_KV_CACHE_SHARE * available
    bounded = min(max(share, defaults.CPU_KV_CACHE_MIN_GIB * GIB), defaults.CPU_KV_CACHE_MAX_GIB * GIB)
    return int(min(bounded, available / 2))


def _node_available_bytes() -> int:
    """Memory available on the NUMA node vLLM binds this process's engine to (cgroup limits honoured)."""
    from vllm.utils.cpu_resource_utils import get_allowed_cpu_list, get_memory_node_info

    return int(get_memory_node_info(get_allowed_cpu_list()[0].numa_node).available_memory)


def memory_args(model: ModelSpec, *, on_gpu: bool, available: Callable[[], int] = _node_available_bytes
                ) -> dict[str, Any]:
    """vLLM's memory arguments: an explicit KV cache size when the spec gives one, and always on CPU
    (`available`: the bytes the engine's NUMA node has)."""
    if model.kv_cache_gib is not None:
        return {"kv_cache_memory_bytes": int(model.kv_cache_gib * GIB)}
    if on_gpu:
        return {"gpu_memory_utilization": model.gpu_memory_utilization or defaults.GPU_MEMORY_UTILIZATION}
    return {"kv_cache_memory_bytes": cpu_kv_cache_bytes(available()),
            "gpu_memory_utilization": model.gpu_memory_utilization or defaults.CPU_GPU_MEMORY_UTILIZATION}


_ERROR_LINE = re.compile(r"^(?:\(\w+ pid=\d+\) )?(?:\w+ [\d-]+ [\d:]+ \[[^\]]+\] )?((?:\w+\.)*\w*(?:Error|Exception): .+)$")
_GENERIC = ("Engine core initialization failed", "please check the stack trace above")


def root_cause(log_text: str) -> str | None:
    """vLLM's own error line in what an engine's processes wrote while it failed to start: the first
    `SomeError: message` that is not one of vLLM's wrappers ("See root cause above")."""
    for line in log_text.splitlines():
        m = _ERROR_LINE.match(line.strip())
        if m and not any(g in m.group(1) for g in _GENERIC):
            return m.group(1)[: defaults.ERROR_MESSAGE_MAX_CHARS]
    return None


def sampling_key(s: Sampling) -> str:
    """The effective sampling of a row, as stable JSON for lineage."""
    return json.dumps(s.model_dump(mode="json", exclude={"seed"}), sort_keys=True, separators=(",", ":"))


def _classify(e: Exception) -> RowFailure:
    msg = str(e)
    too_long = "maximum model length" in msg or "maximum context length" in msg or "input_tokens" in msg
    code = RowErrorCode.PROMPT_TOO_LONG if too_long else RowErrorCode.INVALID_REQUEST
    return RowFailure(code, msg[: defaults.ERROR_MESSAGE_MAX_CHARS])


class FollowUps:
    """A conversation continued by a user turn, as token ids: the tokens the model saw and wrote, then
    the turn. The engine's prefix cache still holds all but the turn, so a follow-up on the same engine
    reads the conversation for free (whole KV blocks of it)."""

    MARK = "\x00reply\x00"
    CACHED_TURNS = 16  # the job's fixed turns; a turn holding row data (a reference answer) is not kept

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.special = frozenset(tokenizer.all_special_ids)
        self.turns: dict[str, list[int]] = {}

    def turn(self, text: str) -> list[int]:
        """What the chat template puts after an assistant's reply for a user turn `text` and the
        assistant's generation prompt: end of turn, the user turn, the assistant's header. A model
        without a chat template (or one that rewrites replies) gets the turn as a plain paragraph."""
        if text in self.turns:
            return self.turns[text]
        try:
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": "?"}, {"role": "assistant", "content": self.MARK},
                 {"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
            after = rendered.split(self.MARK, 1)[1]
        except (ValueError, IndexError, jinja2.TemplateError):
            after = f"\n\n{text}\n"
        ids = self.tokenizer.encode(after, add_special_tokens=False)
        if len(self.turns) < self.CACHED_TURNS:
            self.turns[text] = ids
        return ids

    def ids(self, prompt_ids: Sequence[int], reply_ids: Sequence[int], cut_text: str | None, text: str) -> list[int]:
        """Trailing special tokens of the reply (EOS) give way to the template's end of turn; a reply a
        stop string cut (`cut_text`) is encoded again, so the follow-up sees exactly the stored text.
        `SAME_TURN` adds no turn: the conversation's ids as they stand, to continue or add a turn to later."""
        reply = list(reply_ids) if cut_text is None else self.tokenizer.encode(cut_text, add_special_tokens=False)
        while reply and reply[-1] in self.special:
            reply.pop()
        return [*prompt_ids, *reply, *(self.turn(text) if text != SAME_TURN else [])]

    def after(self, row: PromptRow) -> list[int]:
        """What a row of token ids adds to them: its `messages` as user turns, or its `prompt` as text."""
        if row.messages:
            return [i for m in row.messages for i in self.turn(m["content"])]
        return self.tokenizer.encode(row.prompt, add_special_tokens=False) if row.prompt else []


ENGINE_STOP_S = 30.0  # vLLM's own 5 s default kills a CPU engine still exiting cleanly and leaves it a zombie


class VllmEngine:
    """vLLM's AsyncLLM, kept full by many concurrent requests, returning only final outputs."""

    def __init__(self, model: ModelSpec, *, on_gpu: bool):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        started = time.perf_counter()
        args: dict[str, Any] = dict(
            model=model.path or model.id,
            revision=model.revision,
            tensor_parallel_size=model.tensor_parallel_size,
            dtype=model.dtype,
            **memory_args(model, on_gpu=on_gpu),
            structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
            disable_log_stats=True,
        )
        if model.max_model_len:
            args["max_model_len"] = model.max_model_len
        if not on_gpu:
            # vLLM's CPU runner cannot rewind a per-request seeded generator when a chunked prefill
            # discards a sampled token ("CPU Generator does not use offset"): never chunk there.
            args["enable_chunked_prefill"] = False
        args.update(model.engine_args)
        # Batch generation, not serving: the offline batch defaults (on CPU 256 sequences and 4096
        # tokens per step rather than the server's 128 and 2048), as `vllm.LLM` would pick.
        self.llm = AsyncLLM.from_engine_args(AsyncEngineArgs(**args), usage_context=UsageContext.LLM_CLASS)
        self.tokenizer = self.llm.get_tokenizer()
        self.follow_ups = FollowUps(self.tokenizer)
        revision = model.revision or (weights_fingerprint(model.path) if model.path else "unpinned")
        self.info = EngineInfo(model.name, revision, time.perf_counter() - started,
                               self.llm.model_config.max_model_len)
        self.requests = 0
        self._ids = itertools.count()

    def close(self) -> None:
        """Stop the engine's processes (a worker's end with its actor; an in-process user calls this).
        The AsyncLLM is dropped too: vLLM's import-time frames can keep this object alive until exit."""
        self.llm.shutdown(timeout=ENGINE_STOP_S)
        del self.llm

    def _params(self, row: PromptRow) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        s = row.sampling
        structured = StructuredOutputsParams(json=s.json_schema) if s.json_schema else None
        return SamplingParams(
            n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
            seed=row.seed, stop=s.stop or None, ignore_eos=s.ignore_eos,
            structured_outputs=structured, output_kind=RequestOutputKind.FINAL_ONLY,
        )

    def _prompt(self, row: PromptRow) -> dict[str, Any]:
        if row.prompt_token_ids is not None:
            return {"prompt_token_ids": [*row.prompt_token_ids, *self.follow_ups.after(row)]}
        if row.messages is not None:
            text = self.tokenizer.apply_chat_template(row.messages, tokenize=False, add_generation_prompt=True)
            return {"prompt": text}
        return {"prompt": row.prompt or ""}

    async def generate(self, row: PromptRow, follow_up: str | None = None) -> list[Completion] | RowFailure:
        from vllm.v1.engine.exceptions import EngineDeadError as VllmDead

        self.requests += 1
        try:
            prompt, params = self._prompt(row), self._params(row)
            final = None
            async for out in self.llm.generate(prompt, params, f"{row.row_id}-{next(self._ids)}"):
                final = out
        except VllmDead as e:
            raise EngineDeadError(str(e)) from None
        except Exception as e:  # the engine rejected this request only
            if not self.llm.is_running:
                raise EngineDeadError(f"engine stopped: {e}") from None
            return _classify(e)
        assert final is not None
        prompt_ids, cached = final.prompt_token_ids or [], final.num_cached_tokens or 0
        return [Completion(c.text, str(c.finish_reason), len(prompt_ids), len(c.token_ids), cached,
                           None if follow_up is None else self.follow_ups.ids(
                               prompt_ids, c.token_ids, c.text if isinstance(c.stop_reason, str) else None, follow_up))
                for c in final.outputs]
