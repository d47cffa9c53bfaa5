"""Export a finished job's kept rows as OpenAI Batch output and error files, plain JSONL, or chat
messages for fine-tuning (`synthfleet export`): pure line makers in `formats`, streaming I/O in `write`.

    from orchestrator.export import export_job
    export_job("outputs/quickstart-22d7b9ad90", "openai-batch", "s3://bucket/exports/quickstart")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.export.formats import BATCH_FILES, CHAT, FORMATS, JSONL, OPENAI_BATCH

if TYPE_CHECKING:
    from orchestrator.export.write import Exported, destination, export_job, write_job

__all__ = ["BATCH_FILES", "CHAT", "FORMATS", "JSONL", "OPENAI_BATCH", "Exported", "destination", "export_job",
           "write_job"]
_WRITE = {"Exported", "destination", "export_job", "write_job"}


def __getattr__(name: str) -> Any:
    """The I/O half (pyarrow, storage) is imported on first use, so the CLI's parser stays light."""
    if name in _WRITE:
        from orchestrator.export import write

        return getattr(write, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
