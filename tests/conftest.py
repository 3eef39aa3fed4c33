"""Session fixtures: three real registries over one storage, and the sample images.

Fixture names are a contract used across the suite:

- ``registry`` (no auth), ``basic_registry`` (htpasswd), ``token_registry``
  (distribution token auth, trusting ``token_issuer``): ``RegistryServer``
  objects (``.host``, ``.url``, ``.username``, ``.password``, ``.creds``).
  They share ``registry_storage``, so whatever is pushed through one is served
  by all three. ``RegistryServer.blob_path(digest)`` locates a stored blob;
  corrupt only blobs of images your test built and pushed itself.
- ``sample_images``: ``SampleImages`` (simple, simple_docker, multi_oci,
  multi_docker, public, many_tags), pushed once per session.
- ``push_image(built, "repo:tag", format=None) -> SampleImage``: push a
  ``BuiltImage`` through the plain registry.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest

from support.oci import BuiltImage
from support.registry import RegistryServer, start_registry
from support.samples import SampleImage, SampleImages, push, push_samples
from support.tokens import TokenIssuer

PushImage = Callable[..., SampleImage]


@pytest.fixture(scope="session")
def harness_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Working directory for registry configs and logs."""
    return tmp_path_factory.mktemp("harness")


@pytest.fixture(scope="session")
def registry_storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The filesystem storage all three registries serve (tests may corrupt blobs here)."""
    return tmp_path_factory.mktemp("registry-storage")


@pytest.fixture(scope="session")
def registry(registry_storage: Path, harness_dir: Path) -> Iterator[RegistryServer]:
    with start_registry(registry_storage, auth="none", workdir=harness_dir / "plain") as server:
        yield server


@pytest.fixture(scope="session")
def basic_registry(registry_storage: Path, harness_dir: Path) -> Iterator[RegistryServer]:
    with start_registry(registry_storage, auth="basic", workdir=harness_dir / "basic") as server:
        yield server


@pytest.fixture(scope="session")
def token_issuer(harness_dir: Path) -> Iterator[TokenIssuer]:
    workdir = harness_dir / "token"
    workdir.mkdir(exist_ok=True)
    with TokenIssuer(workdir=workdir) as issuer:
        yield issuer


@pytest.fixture(scope="session")
def token_registry(
    registry_storage: Path, harness_dir: Path, token_issuer: TokenIssuer
) -> Iterator[RegistryServer]:
    with start_registry(
        registry_storage, auth="token", workdir=harness_dir / "token", issuer=token_issuer
    ) as server:
        yield server


@pytest.fixture(scope="session")
def sample_images(registry: RegistryServer, harness_dir: Path) -> SampleImages:
    return push_samples(registry, harness_dir)


@pytest.fixture(scope="session")
def push_image(registry: RegistryServer) -> PushImage:
    """``push_image(built, "repo:tag", format=None)`` through the plain registry."""

    def _push(
        built: BuiltImage, repo_tag: str, *, format: Literal["oci", "v2s2"] | None = None
    ) -> SampleImage:
        return push(registry, built, repo_tag, format=format)

    return _push


@pytest.fixture
def ramfs(tmp_path: Path) -> Iterator[Path]:
    """A file system without any xattr support (ramfs)."""
    mountpoint = tmp_path / "ramfs"
    mountpoint.mkdir()
    done = subprocess.run(
        ["mount", "-t", "ramfs", "none", str(mountpoint)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount ramfs: {done.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True, timeout=30)
