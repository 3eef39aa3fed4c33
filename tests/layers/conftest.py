"""Fixtures shared by the layer tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def workspace() -> Iterator[Path]:
    """A directory uid 65534 can reach, removed afterwards."""
    # Not under pytest's tmp_path: /tmp/pytest-of-root is 0700, closed to 65534.
    path = Path(tempfile.mkdtemp(prefix="unpacked-unpriv-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)
