"""Fixtures of the registry client tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fakeserver import FakeRegistry
from regtools import FAST, MakeClient, Sleeps, auth_file

from unpacked.registry import RegistryClient, RegistryOptions


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def fake() -> Iterator[FakeRegistry]:
    with FakeRegistry() as server:
        yield server


@pytest.fixture
def make_client(tmp_path: Path, sleeps: Sleeps) -> Iterator[MakeClient]:
    """``make_client(auths=None, transport=None, clock=None, **options)``; closed at the end."""
    made: list[RegistryClient] = []

    def make(
        auths: dict[str, dict[str, str]] | None = None,
        transport: Any = None,
        clock: Callable[[], float] | None = None,
        **options: Any,
    ) -> RegistryClient:
        settings = {**FAST, **options}
        opts = RegistryOptions(auth_file=auth_file(tmp_path, auths), **settings)
        extra = {"clock": clock} if clock is not None else {}
        client = RegistryClient(opts, transport=transport, sleep=sleeps, **extra)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
