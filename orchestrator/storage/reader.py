"""Read an input file (local or s3://) as a seekable binary stream, fetching ranges on demand."""

from __future__ import annotations

import io
from typing import BinaryIO

from orchestrator.storage import LocalStore, Store, split_uri

BUFFER = 4 * 1024 * 1024


class RangeReader(io.RawIOBase):
    """A raw, seekable stream over one object, backed by ranged GETs."""

    def __init__(self, store: Store, key: str, size: int):
        self.store, self.key, self.length, self.pos = store, key, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.length}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        end = min(self.pos + len(buffer), self.length)
        if end <= self.pos:
            return 0
        data = self.store.get_range(self.key, self.pos, end)
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)


def open_input(uri: str, start: int = 0) -> BinaryIO:
    """A buffered binary stream over `uri`, positioned at byte `start`."""
    store, key = split_uri(uri)
    if isinstance(store, LocalStore):
        f: BinaryIO = open(store.root / key, "rb")  # noqa: SIM115 - the caller closes it
    else:
        size = store.size(key)
        if size is None:
            raise FileNotFoundError(uri)
        f = io.BufferedReader(RangeReader(store, key, size), buffer_size=BUFFER)  # type: ignore[assignment]
    f.seek(start)
    return f
