"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.storage import LocalStore, MemoryStore, Store, open_store


@pytest.fixture(params=["memory", "local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """The same behaviour asked of every backend: in memory, a local folder, S3 (moto over HTTP)."""
    if request.param == "memory":
        return MemoryStore()
    if request.param == "local":
        return LocalStore(tmp_path / "root")
    return open_store(f"s3://{request.getfixturevalue('bucket')}/prefix")
