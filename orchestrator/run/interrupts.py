"""Ctrl-C and SIGTERM end a run or the service the same clean way.

SIGTERM is turned into what Ctrl-C does (asyncio cancels the job's main task, whose `finally` stops
dispatch and the workers; then KeyboardInterrupt), and remembered, so the CLI exits 130 or 143.
Ray's driver installs a C-level SIGTERM handler that dumps stack traces; `keep_handlers` puts the
Python-level handler back after Ray starts.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

_received: list[int] = []


def _on_terminate(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:
        raise KeyboardInterrupt


def install() -> None:
    """From now on Ctrl-C interrupts this process, and SIGTERM does as Ctrl-C does.

    Ctrl-C is set back to Python's own handler first: a process started in the background by a
    shell script inherits SIGINT ignored, and then neither Ctrl-C nor asyncio's clean cancellation of
    the main task (which asyncio only sets up over Python's own handler) would work.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_terminate)


def exit_code() -> int:
    """128 + the signal that interrupted: 143 for SIGTERM, 130 for Ctrl-C."""
    return 128 + (_received[-1] if _received else signal.SIGINT)


@contextlib.contextmanager
def keep_handlers() -> Iterator[None]:
    """Whatever SIGTERM handler was set before the block is set again after it (Ray's start replaces it)."""
    main = threading.current_thread() is threading.main_thread()
    before: Any = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and before is not None:
            signal.signal(signal.SIGTERM, before)
