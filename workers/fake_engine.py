"""The one test double of the Engine seam, shipped in the package, as httpx ships `MockTransport`.

`FakeEngine(handler)` is an Engine whose replies a handler decides: `handler(row, follow_up)` returns
(or, when async, resolves to) the row's completions or a `RowFailure`, and may raise what an engine
raises. Tests pass their own handler; `model.engine: fake` specs run on `sleeping_engine`, whose
`SleepingHandler` "generates" at a fixed rate per sequence without using the CPU, so 32 simulated
GPUs fit on a laptop, and whose fault knobs inject the failures a real fleet sees. It never replaces
vLLM in a test of a path vLLM serves.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from orchestrator.errors import EngineDeadError, ShardError
from orchestrator.spec.model import FakeEngineArgs
from workers.engine import Completion, EngineInfo
from workers.prompts import PromptRow, RowFailure

Reply = list[Completion] | RowFailure
Handler = Callable[[PromptRow, str | None], Reply | Awaitable[Reply]]


class FakeEngine:
    """The Engine protocol of workers/engine.py, answering each request with `handler(row, follow_up)`.

    A sync handler's reply comes at the next turn of the event loop, as an engine's would; an async
    one's when it resolves. `info` defaults to a model and revision named "fake".
    """

    def __init__(self, handler: Handler, info: EngineInfo | None = None):
        self.handler = handler
        self.info = info or EngineInfo(model="fake", revision="fake", load_seconds=0.0, max_model_len=1 << 20)
        self.requests = 0

    async def generate(self, row: PromptRow, follow_up: str | None = None) -> list[Completion] | RowFailure:
        self.requests += 1
        reply = self.handler(row, follow_up)
        if isinstance(reply, Awaitable):
            return await reply
        await asyncio.sleep(0)
        return reply


class SleepingHandler:
    """The replies of a `model.engine: fake` spec: `max_tokens` "tok" per sample after sleeping them at
    `tokens_per_s`, with the faults and request log its `FakeEngineArgs` ask for."""

    def __init__(self, args: FakeEngineArgs):
        self.args = args

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

    async def __call__(self, row: PromptRow, follow_up: str | None) -> list[Completion] | RowFailure:
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


def sleeping_engine(model_name: str, args: FakeEngineArgs) -> FakeEngine:
    """The engine of a `model.engine: fake` spec: loads for `args.load_seconds`, then sleeps its replies."""
    started = time.perf_counter()
    time.sleep(args.load_seconds)
    info = EngineInfo(model_name, "fake", time.perf_counter() - started, 1 << 20)
    return FakeEngine(SleepingHandler(args), info)
