"""A sleeping stand-in for a GPU engine, for orchestration-scale tests and benchmarks.

It "generates" at a fixed rate per sequence without using the CPU, so 32 simulated GPUs fit on a
laptop; fault knobs inject the failures a real fleet sees. It never replaces vLLM in a test of a
path vLLM serves.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from orchestrator.errors import EngineDeadError, ShardError
from orchestrator.spec.model import FakeEngineArgs
from workers.engine import Completion, EngineInfo
from workers.prompts import PromptRow, RowFailure


class FakeEngine:
    def __init__(self, model_name: str, args: FakeEngineArgs):
        started = time.perf_counter()
        time.sleep(args.load_seconds)
        self.args, self.requests = args, 0
        self.info = EngineInfo(model_name, "fake", time.perf_counter() - started, 1 << 20)

    def _fires(self, kind: str, index: int, rows: list[int]) -> bool:
        if index not in rows:
            return False
        if self.args.once_dir is None:
            return True
        try:
            (Path(self.args.once_dir) / f"{kind}-{index}").touch(exist_ok=False)
            return True
        except FileExistsError:
            return False

    async def generate(self, row: PromptRow, follow_up: str | None = None) -> list[Completion] | RowFailure:
        self.requests += 1
        if self.args.request_log:
            with open(self.args.request_log, "a") as log:
                log.write(f"{row.index}\n")
        if self._fires("die", row.index, self.args.die_rows):
            raise EngineDeadError(f"injected engine death on row {row.index}")
        if self._fires("fail", row.index, self.args.fail_rows):
            raise ShardError(f"injected failure on row {row.index}")
        tokens = row.sampling.max_tokens
        await asyncio.sleep(tokens / self.args.tokens_per_s)
        text = " ".join(["tok"] * tokens)
        if self.args.echo:
            text = f"{row.prompt or (row.messages or [{}])[-1].get('content', '')} {text}"
        prompt_tokens = len((row.prompt or str(row.messages)).split())
        return [Completion(text, "length", prompt_tokens, tokens) for _ in range(row.sampling.n)]
