"""The one storage interface both backends and the in-memory test double implement.

Keys are relative, `/`-separated and normalised; `put_if_absent` is the exactly-once primitive:
the first writer of a key wins and nobody can overwrite it afterwards.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator

from orchestrator.errors import ExistsError, StorageError

_STATS: Counter[str] = Counter()
_STATS_LOCK = threading.Lock()


def count_storage(operation: str, outcome: str, retries: int = 0) -> None:
    """Record one object-storage call of this process (drained into the coordinator's metrics)."""
    with _STATS_LOCK:
        _STATS[f"{operation}|{outcome}"] += 1
        _STATS["retries"] += retries


def drain_storage_stats() -> dict[str, int]:
    """Calls counted since the last drain: `operation|outcome` -> n, plus `retries`."""
    with _STATS_LOCK:
        stats = {k: v for k, v in _STATS.items() if v}
        _STATS.clear()
    return stats


def check_key(key: str) -> str:
    """Reject keys that could escape the store's root or alias another key."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StorageError(f"invalid storage key {key!r}: no empty, '.' or '..' segments allowed")
    return key


class Store(ABC):
    """A folder of immutable-once-committed objects under one root URI."""

    uri: str

    @abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Write `key` unless it exists. True if this call's bytes are now stored there."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write or replace `key` (only for objects derived deterministically from commits)."""

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of `key`."""

    @abstractmethod
    def size(self, key: str) -> int | None:
        """Size in bytes, or None when the key does not exist."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Keys under `prefix`, relative to the root, in lexical order."""

    @abstractmethod
    def check_writable(self) -> None:
        """Raise StorageError with a fix if this root cannot be written (before any work)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key` if it exists (the Files API's DELETE; never a job's committed files)."""

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def fingerprint(self, key: str) -> str:
        """A cheap identity of the object's content (size plus ETag or mtime)."""
        size = self.size(key)
        if size is None:
            raise StorageError(f"{self.uri}/{key} does not exist")
        return str(size)

    def child(self, prefix: str) -> Store:
        """A store rooted at `prefix` below this one."""
        return PrefixStore(self, check_key(prefix))

    def open_upload(self, key: str, *, overwrite: bool = False) -> Upload:
        """An object written piece by piece and stored whole at `key` on commit (an export's file). The
        local and S3 stores stream it; this default holds it in memory, as the in-memory store does."""
        return Upload(self, check_key(key), overwrite)


def exists_error(uri: str) -> ExistsError:
    return ExistsError(f"{uri} exists; remove it, write elsewhere, or replace it (--force)")


class Upload:
    """An object written piece by piece, then committed whole: its key never holds part of it, and
    without `overwrite` an existing key is never replaced (`ExistsError`). As a context manager it
    commits on a clean exit and aborts on an exception."""

    def __init__(self, store: Store, key: str, overwrite: bool):
        self.store, self.key, self.overwrite = store, key, overwrite
        self._pieces: list[bytes] = []

    @property
    def uri(self) -> str:
        return f"{self.store.uri.rstrip('/')}/{self.key}"

    def write(self, data: bytes) -> None:
        self._pieces.append(bytes(data))

    def commit(self) -> None:
        data, self._pieces = b"".join(self._pieces), []
        if self.overwrite:
            self.store.put(self.key, data)
        elif self.store.exists(self.key) or not self.store.put_if_absent(self.key, data):
            raise self.exists()

    def abort(self) -> None:
        self._pieces = []

    def exists(self) -> ExistsError:
        return exists_error(self.uri)

    def __enter__(self) -> Upload:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()


class PrefixStore(Store):
    def __init__(self, inner: Store, prefix: str):
        self.inner, self.prefix, self.uri = inner, prefix, f"{inner.uri}/{prefix}"

    def _k(self, key: str) -> str:
        return f"{self.prefix}/{check_key(key)}"

    def put_if_absent(self, key: str, data: bytes) -> bool:
        return self.inner.put_if_absent(self._k(key), data)

    def put(self, key: str, data: bytes) -> None:
        self.inner.put(self._k(key), data)

    def get(self, key: str) -> bytes:
        return self.inner.get(self._k(key))

    def get_range(self, key: str, start: int, end: int) -> bytes:
        return self.inner.get_range(self._k(key), start, end)

    def size(self, key: str) -> int | None:
        return self.inner.size(self._k(key))

    def fingerprint(self, key: str) -> str:
        return self.inner.fingerprint(self._k(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        base = f"{self.prefix}/"
        for key in self.inner.list(base + prefix):
            yield key[len(base):]

    def check_writable(self) -> None:
        self.inner.check_writable()

    def delete(self, key: str) -> None:
        self.inner.delete(self._k(key))

    def open_upload(self, key: str, *, overwrite: bool = False) -> Upload:
        return self.inner.open_upload(self._k(key), overwrite=overwrite)
