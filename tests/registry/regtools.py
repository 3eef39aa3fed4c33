"""Helpers shared by the registry client tests (fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from unpacked.digest import Digest
from unpacked.manifest import Descriptor
from unpacked.registry import RegistryClient

FAST = {"retries": 2, "backoff_base": 0.01, "timeout": 5.0}
"""Options for fault tests: few retries; the sleeps are recorded, not slept."""


def descriptor_of(data: bytes, media_type: str = "application/octet-stream") -> Descriptor:
    return Descriptor(media_type, Digest("sha256", hashlib.sha256(data).hexdigest()), len(data))


def auth_file(directory: Path, auths: dict[str, dict[str, str]] | None = None) -> Path:
    """A config.json with ``auths`` (empty: no credentials, and no discovery either)."""
    path = directory / "config.json"
    path.write_text(json.dumps({"auths": auths or {}}))
    return path


class Sleeps(list[float]):
    """A fake ``sleep`` that records what it was asked to wait."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


MakeClient = Callable[..., RegistryClient]
