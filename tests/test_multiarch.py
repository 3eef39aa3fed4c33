"""Multi-platform wishes: a flat tree and a `.multiarch` link per platform."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from support.registry import RegistryServer
from support.samples import SampleImages
from unpacked.batch import convert_wishlist
from unpacked.publish import open_publisher
from unpacked.registry import RegistryClient
from unpacked.verify import verify_repository
from unpacked.wishlist import loads

PLATFORMS = ("linux/amd64", "linux/arm64/v8")


def _convert(registry: RegistryServer, image_ref: str, repo: Path) -> list[str]:
    recipe = f"version: 1\nplatforms: [linux/amd64, linux/arm64]\ninput:\n  - '{image_ref}'\n"
    wishlist = loads(recipe, source="recipe.yaml")
    with RegistryClient() as client:
        report = convert_wishlist(wishlist, client=client, publisher=open_publisher(f"dir:{repo}"))
    assert not report.failed, [i.error for i in report.images]
    return [image.outcome for image in report.images]


@pytest.mark.parametrize("which", ["multi_oci", "multi_docker"])
def test_every_platform_gets_a_flat_tree_and_a_multiarch_link(
    registry: RegistryServer, sample_images: SampleImages, tmp_path: Path, which: str
) -> None:
    index = getattr(sample_images, which)
    repo = tmp_path / "repo"
    assert _convert(registry, index.ref(registry), repo) == ["added", "added"]
    public = f"{registry.host}/{index.repository}:{index.tag}"
    for platform, arch in zip(PLATFORMS, ("amd64", "arm64:v8"), strict=True):
        config = index.for_platform(platform).config_digest.removeprefix("sha256:")
        flat = repo / ".flat" / config[:2] / config
        link = repo / ".multiarch" / arch / public
        assert os.readlink(link).startswith("../"), "links are relative"
        assert link.resolve() == flat.resolve()
        assert (flat / ".singularity.d").is_dir()
    amd64 = index.for_platform("linux/amd64").config_digest.removeprefix("sha256:")
    assert (repo / public).resolve() == (repo / ".flat" / amd64[:2] / amd64).resolve()
    # uname -m names lead to the same links
    assert os.readlink(repo / ".multiarch" / "x86_64") == "amd64"
    assert os.readlink(repo / ".multiarch" / "aarch64") == "arm64:v8"
    assert (repo / ".multiarch" / "aarch64" / public).resolve() == (
        repo / ".multiarch" / "arm64:v8" / public
    ).resolve()
    # the default platform's metadata where users expect it, the other's beside it
    status = json.loads((repo / ".metadata" / public / "status.json").read_bytes())
    assert status["platform"] == "linux/amd64"
    other = repo / ".metadata" / ".multiarch" / "arm64:v8" / public / "status.json"
    assert json.loads(other.read_bytes())["platform"] == "linux/arm64/v8"


def test_second_run_is_unchanged_for_every_platform(
    registry: RegistryServer, sample_images: SampleImages, tmp_path: Path
) -> None:
    ref = sample_images.multi_oci.ref(registry)
    repo = tmp_path / "repo"
    _convert(registry, ref, repo)
    assert _convert(registry, ref, repo) == ["unchanged", "unchanged"]


def test_a_multi_platform_repository_verifies_clean(
    registry: RegistryServer, sample_images: SampleImages, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    _convert(registry, sample_images.multi_oci.ref(registry), repo)
    report = verify_repository(open_publisher(f"dir:{repo}"))
    assert report.findings == ()
