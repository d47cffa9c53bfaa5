"""Storage: one interface (`Store`), a local-folder and an S3 backend, and an in-memory double."""

from __future__ import annotations

import os
from urllib.parse import unquote, urlparse

from orchestrator.errors import StorageError
from orchestrator.storage.base import Store, check_key
from orchestrator.storage.local import LocalStore
from orchestrator.storage.memory import MemoryStore
from orchestrator.storage.s3 import S3Store

__all__ = ["Store", "LocalStore", "MemoryStore", "S3Store", "open_store", "split_uri", "check_uri",
           "check_text"]


def check_text(text: str) -> str:
    """Refuse a path or URI holding a control character (C0, DEL): a newline would name a folder, NUL
    fails deep in the OS. Returns `text`."""
    bad = next((i for i, c in enumerate(text) if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        raise StorageError(f"{text!r}: control character U+{ord(text[bad]):04X} at position {bad + 1}; remove it")
    return text


def _check_segments(uri: str, path: str) -> None:
    """Refuse `..` in a path, also percent-encoded (`%2e%2e`), which some layers decode later."""
    for segment in path.replace("\\", "/").split("/"):
        if segment == ".." or (segment != unquote(segment) and unquote(segment) in (".", "..")):
            if segment == "..":
                raise StorageError(f"{uri}: '..' is not allowed in storage paths")
            raise StorageError(f"{uri}: {segment!r} is a percent-encoded {unquote(segment)!r}, which is not "
                               "allowed in storage paths")


def check_uri(uri: str) -> str:
    """Normalise a storage URI; reject control characters, a leading `~` (never expanded), and `..`
    (also percent-encoded), `.` and empty segments in any object prefix."""
    uri = check_text(uri).strip()
    if not uri:
        raise StorageError("empty storage URI")
    if uri.startswith("~"):
        home = os.path.expanduser(uri)
        raise StorageError(f"{uri}: '~' is not expanded here; write the full path"
                           + (f" ({home})" if home != uri else ""))
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StorageError(f"{uri}: no bucket; use s3://bucket/prefix")
        prefix = parsed.path.lstrip("/").rstrip("/")
        _check_segments(uri, prefix)
        if prefix:
            check_key(prefix)
        return f"s3://{parsed.netloc}/{prefix}".rstrip("/")
    if parsed.scheme not in ("", "file"):
        raise StorageError(f"{uri}: unsupported scheme {parsed.scheme!r}; use a path, file:// or s3://")
    if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
        raise StorageError(f"{uri}: a file:// URI needs an absolute path (file:///abs/path); "
                           "give a relative folder as a plain path")
    path = parsed.path if parsed.scheme == "file" else uri
    _check_segments(uri, path)
    return os.path.normpath(path)


def open_store(uri: str) -> Store:
    """The store rooted at `uri` (a folder, file://, or s3://bucket/prefix)."""
    norm = check_uri(uri)
    if norm.startswith("s3://"):
        bucket, _, prefix = norm[5:].partition("/")
        return S3Store(bucket, prefix)
    return LocalStore(norm)


def split_uri(uri: str) -> tuple[Store, str]:
    """A file URI as (store of its folder, key of the file)."""
    norm = check_uri(uri)
    if norm.startswith("s3://"):
        bucket, _, key = norm[5:].partition("/")
        if not key:
            raise StorageError(f"{uri}: names a bucket, not a file")
        return S3Store(bucket), key
    return LocalStore(os.path.dirname(os.path.abspath(norm))), os.path.basename(norm)
