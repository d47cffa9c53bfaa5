"""An in-memory store: the test double for storage, with the same exactly-once semantics."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from orchestrator.errors import StorageError
from orchestrator.storage.base import Store, check_key


class MemoryStore(Store):
    def __init__(self, uri: str = "memory://"):
        self.uri = uri
        self.objects: dict[str, bytes] = {}
        self.puts = 0
        self._lock = threading.Lock()

    def put_if_absent(self, key: str, data: bytes) -> bool:
        with self._lock:
            self.puts += 1
            if check_key(key) in self.objects:
                return self.objects[key] == data
            self.objects[key] = bytes(data)
            return True

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            self.puts += 1
            self.objects[check_key(key)] = bytes(data)

    def delete(self, key: str) -> None:
        with self._lock:
            self.objects.pop(check_key(key), None)

    def get(self, key: str) -> bytes:
        try:
            return self.objects[check_key(key)]
        except KeyError:
            raise StorageError(f"{self.uri}{key} does not exist") from None

    def get_range(self, key: str, start: int, end: int) -> bytes:
        return self.get(key)[start:end]

    def size(self, key: str) -> int | None:
        data = self.objects.get(check_key(key))
        return None if data is None else len(data)

    def list(self, prefix: str = "") -> Iterator[str]:
        yield from sorted(k for k in list(self.objects) if k.startswith(prefix))

    def check_writable(self) -> None:
        return None
