"""Local filesystem backend: the embedded default. Commits link a temp file into place,
which fails if the name exists, so a retry or a zombie attempt never clobbers a commit."""

from __future__ import annotations

import os
import stat
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from orchestrator.errors import StorageError
from orchestrator.storage.base import Store, Upload, check_key


class LocalStore(Store):
    def __init__(self, root: str | Path):
        self.root = Path(root).absolute()
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _write_temp(self, path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".tmp-{path.name}-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def put_if_absent(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return path.read_bytes() == data
        except OSError as e:
            raise StorageError(f"cannot commit {path}: {e.strerror}") from e
        finally:
            tmp.unlink(missing_ok=True)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        os.replace(self._write_temp(path, data), path)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except OSError as e:
            raise StorageError(f"cannot read {self._path(key)}: {e.strerror}") from e

    def get_range(self, key: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        try:
            with open(self._path(key), "rb") as f:
                f.seek(start)
                return f.read(end - start)
        except OSError as e:
            raise StorageError(f"cannot read {self._path(key)}: {e.strerror}") from e

    def size(self, key: str) -> int | None:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):  # nothing there, or a file where a folder would be
            return None
        return None if stat.S_ISDIR(st.st_mode) else st.st_size

    def fingerprint(self, key: str) -> str:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            raise StorageError(f"{self._path(key)} does not exist") from None
        return f"{st.st_size}-{st.st_mtime_ns}"

    def list(self, prefix: str = "") -> Iterator[str]:
        folder = prefix.rpartition("/")[0]
        start = self.root / folder if folder else self.root
        if not start.is_dir():
            return
        keys = []
        for dirpath, _, files in os.walk(start):
            for name in files:
                if name.startswith(".tmp-"):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        yield from sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as e:
            raise StorageError(f"cannot delete {self._path(key)}: {e.strerror}") from e

    def open_upload(self, key: str, *, overwrite: bool = False) -> Upload:
        return LocalUpload(self, check_key(key), overwrite)

    def check_writable(self) -> None:
        """Create and remove a probe folder in the nearest existing folder: what the job's first write
        will need there. Permission bits alone say yes as root, and on /proc; the OS is the judge."""
        probe = self.root
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir():
            raise StorageError(f"output folder {self.root} is not writable: {probe} is a file")
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=probe))
        except OSError as e:
            raise StorageError(f"output folder {self.root} is not writable: cannot create a folder in "
                               f"{probe} ({e.strerror or e})") from None


class LocalUpload(Upload):
    """A temp file beside the target, linked into place on commit (without `overwrite`, failing if the
    name exists, as commits do) or renamed over it (with)."""

    def __init__(self, store: LocalStore, key: str, overwrite: bool):
        super().__init__(store, key, overwrite)
        self.path = store.root / key
        self.tmp = self.path.parent / f".tmp-{self.path.name}-{uuid.uuid4().hex}"
        if self.path.is_dir():
            raise StorageError(f"{self.path} is a folder; name a file")
        blocking = next((p for p in self.path.parents if p.is_file()), None)
        if blocking is not None:
            raise StorageError(f"cannot write {self.path}: {blocking} is a file, not a folder")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.tmp, "wb")  # noqa: SIM115 - closed by commit or abort
        except OSError as e:
            raise StorageError(f"cannot write {self.path}: {e.strerror or e}") from None

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def commit(self) -> None:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            if self.overwrite:
                os.replace(self.tmp, self.path)
            else:
                os.link(self.tmp, self.path)
        except FileExistsError:
            raise self.exists() from None
        except OSError as e:
            raise StorageError(f"cannot write {self.path}: {e.strerror or e}") from None
        finally:
            self.tmp.unlink(missing_ok=True)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)
