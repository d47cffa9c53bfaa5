"""Every error synthfleet raises, in one tree, each saying whether a retry can help.

    SynthfleetError
    ├── SpecError               bad job spec or input; never retriable; carries every problem
    ├── StorageError            object storage or filesystem failure (retriable by default)
    │   ├── ConflictError       the job folder holds a different job; never retriable
    │   ├── ManifestError       a `_manifest.json` this version cannot read (damaged); never retriable
    │   └── ExistsError         a file to write exists and replacing it was not asked for; never retriable
    ├── EngineDeadError         the inference engine died: replace the worker, retry the shard
    ├── ShardError              a shard attempt failed for another reason: retry elsewhere
    ├── JobFailedError          shards failed after every retry, or the job was cancelled
    ├── JobInterrupted          Ctrl-C or SIGTERM stopped a run; committed shards are kept
    ├── NotFoundError           no such job (HTTP 404)
    ├── AuthError               missing or invalid API token (HTTP 401)
    ├── ConfigError             a deployment setting is unusable (an unreadable token file); never retriable
    ├── ServerUnavailableError  the server cannot be reached, timed out or is overloaded; retriable
    └── ServerError             the server failed a request (HTTP 500 or an unexpected status)

Per-row problems (over-long prompt, template failure, invalid structured output) are not
exceptions that travel: they become rows in `errors/` with a code from `RowErrorCode`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class RowErrorCode(StrEnum):
    """Why a row went to `errors/` instead of the data shards."""

    PROMPT_TOO_LONG = "prompt_too_long"
    TEMPLATE_ERROR = "template_error"
    INVALID_REQUEST = "invalid_request"
    SCHEMA_VIOLATION = "schema_violation"
    ENGINE_ERROR = "engine_error"
    JUDGE_ERROR = "judge_error"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec: where (a dotted field path) and what to do about it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SynthfleetError(Exception):
    retriable: bool = False


class SpecError(SynthfleetError):
    """The spec or one of its inputs is unusable; nothing has started or been written."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class StorageError(SynthfleetError):
    retriable = True


class ConflictError(StorageError):
    retriable = False


class ManifestError(StorageError):
    """A `_manifest.json` that does not parse as this version's manifest: a damaged job folder."""

    retriable = False


class ExistsError(StorageError):
    """A destination (an export's file) exists, and replacing it was not asked for (`--force`)."""

    retriable = False


class EngineDeadError(SynthfleetError):
    retriable = True


class ShardError(SynthfleetError):
    retriable = True


class JobFailedError(SynthfleetError):
    def __init__(self, message: str, failed_shards: list[int]):
        self.failed_shards = failed_shards
        super().__init__(message)


class JobInterrupted(SynthfleetError):
    """Ctrl-C or SIGTERM stopped a run; what was committed stays, and the same command resumes."""

    def __init__(self, shards_committed: int, shards: int):
        self.shards_committed, self.shards = shards_committed, shards
        super().__init__(f"interrupted: {shards_committed} of {shards} shards committed are kept; "
                         "run the same command again to resume")


class NotFoundError(SynthfleetError):
    pass


class AuthError(SynthfleetError):
    pass


class ConfigError(SynthfleetError):
    """A per-process setting (option or environment variable) is unusable; say which and what to do."""


class ServerUnavailableError(SynthfleetError):
    """No answer from the server: connection refused, timeout, connection lost, or a proxy's 502/503/504."""

    retriable = True


class ServerError(SynthfleetError):
    """The server answered with a failure that is not the caller's to fix (HTTP 500 or an unexpected status)."""
