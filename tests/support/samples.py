"""The sample images every registry-facing test can rely on, and how they are pushed.

All facts in a ``SampleImage`` are read back from the registry after the push
(not assumed from what was built), because a skopeo format conversion rewrites
manifests and configs.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from .oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    BuiltImage,
    TarEntry,
    build_image,
    build_index,
    sha256,
    tar_bytes,
)
from .registry import HarnessError, RegistryServer, skopeo_copy

ACCEPT = ", ".join([OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST])
LIST_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MANY_TAGS = 120


@dataclass(frozen=True)
class SampleImage:
    """A manifest (or index / manifest list) as the registry serves it.

    The per-platform ``manifests`` of a list carry the list's tag; address them
    with ``digest_ref``.
    """

    repository: str
    tag: str
    digest: str
    media_type: str
    manifest_bytes: bytes
    config_digest: str | None = None
    config_bytes: bytes | None = None
    layer_digests: tuple[str, ...] = ()
    layer_sizes: tuple[int, ...] = ()
    layer_media_types: tuple[str, ...] = ()
    platform: str | None = None
    manifests: tuple[SampleImage, ...] = ()
    tags: tuple[str, ...] = ()
    """Every tag pointing at this manifest, when the sample made several."""
    built: BuiltImage | None = None
    files: Mapping[str, bytes] = field(default_factory=dict)
    """Regular files (path → content) of the merged root file system, when known."""

    @property
    def is_list(self) -> bool:
        return self.media_type in LIST_TYPES

    @property
    def size(self) -> int:
        return len(self.manifest_bytes)

    @property
    def manifest(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.manifest_bytes)
        return parsed

    @property
    def diff_ids(self) -> tuple[str, ...]:
        if self.config_bytes is None:
            return ()
        return tuple(json.loads(self.config_bytes)["rootfs"]["diff_ids"])

    @property
    def platforms(self) -> tuple[str, ...]:
        if self.is_list:
            return tuple(m.platform or "" for m in self.manifests)
        return (self.platform,) if self.platform else ()

    def for_platform(self, platform: str) -> SampleImage:
        for image in self.manifests:
            if image.platform == platform:
                return image
        raise KeyError(f"{self.repository}:{self.tag} has no {platform} image")

    def ref(self, server: RegistryServer, tag: str | None = None) -> str:
        """``127.0.0.1:PORT/repo:tag`` on ``server``."""
        return f"{server.host}/{self.repository}:{tag or self.tag}"

    def digest_ref(self, server: RegistryServer) -> str:
        """``127.0.0.1:PORT/repo@sha256:...`` on ``server``."""
        return f"{server.host}/{self.repository}@{self.digest}"


@dataclass(frozen=True)
class SampleImages:
    simple: SampleImage
    simple_docker: SampleImage
    multi_oci: SampleImage
    multi_docker: SampleImage
    public: SampleImage
    many_tags: SampleImage


def _get(client: httpx.Client, server: RegistryServer, path: str, accept: str) -> httpx.Response:
    response = client.get(f"{server.url}{path}", headers={"Accept": accept})
    if response.status_code != 200:
        raise HarnessError(f"GET {server.url}{path}: {response.status_code} {response.text}")
    return response


def _platform(config: Mapping[str, Any]) -> str:
    parts = [config["os"], config["architecture"], config.get("variant")]
    return "/".join(p for p in parts if p)


def describe(
    server: RegistryServer,
    repository: str,
    reference: str,
    *,
    tag: str | None = None,
    built: BuiltImage | None = None,
    files: Mapping[str, bytes] | None = None,
) -> SampleImage:
    """Read ``repository:reference`` (tag or digest) back from ``server`` (not token auth)."""
    with httpx.Client(timeout=30, auth=_auth(server)) as client:
        return _describe(
            client, server, repository, reference, tag=tag, built=built, files=files or {}
        )


def _describe(
    client: httpx.Client,
    server: RegistryServer,
    repository: str,
    reference: str,
    *,
    tag: str | None,
    built: BuiltImage | None,
    files: Mapping[str, bytes],
) -> SampleImage:
    response = _get(client, server, f"/v2/{repository}/manifests/{reference}", ACCEPT)
    body, media_type = response.content, response.headers["Content-Type"]
    digest = sha256(body)
    if response.headers.get("Docker-Content-Digest") != digest:
        raise HarnessError(f"{repository}:{reference}: registry digest differs from {digest}")
    manifest = json.loads(body)
    image = SampleImage(
        repository=repository,
        tag=tag or reference,
        digest=digest,
        media_type=media_type,
        manifest_bytes=body,
        built=built,
        files=files,
    )
    if media_type in LIST_TYPES:
        children = tuple(
            _describe(client, server, repository, m["digest"], tag=tag, built=None, files={})
            for m in manifest["manifests"]
        )
        return dataclasses.replace(image, manifests=children)
    config_digest = manifest["config"]["digest"]
    config = _get(client, server, f"/v2/{repository}/blobs/{config_digest}", "*/*").content
    layers = manifest["layers"]
    return dataclasses.replace(
        image,
        config_digest=config_digest,
        config_bytes=config,
        layer_digests=tuple(layer["digest"] for layer in layers),
        layer_sizes=tuple(layer["size"] for layer in layers),
        layer_media_types=tuple(layer["mediaType"] for layer in layers),
        platform=_platform(json.loads(config)),
    )


def push(
    server: RegistryServer,
    built: BuiltImage,
    repo_tag: str,
    *,
    format: Literal["oci", "v2s2"] | None = None,
    files: Mapping[str, bytes] | None = None,
) -> SampleImage:
    """Push ``built`` to ``server`` as ``repo:tag`` with skopeo; describe what landed."""
    repository, _, tag = repo_tag.rpartition(":")
    if not repository or "/" in tag:
        raise ValueError(f"{repo_tag!r} is not repository:tag")
    skopeo_copy(
        built.oci_ref, f"docker://{server.host}/{repo_tag}", format=format, dest_creds=server.creds
    )
    return describe(server, repository, tag, built=built if format is None else None, files=files)


def put_manifest(server: RegistryServer, image: SampleImage, tags: Iterable[str]) -> None:
    """Tag ``image`` again under each of ``tags`` by PUTting its exact manifest bytes."""
    with httpx.Client(timeout=30, auth=_auth(server)) as client:
        for tag in tags:
            response = client.put(
                f"{server.url}/v2/{image.repository}/manifests/{tag}",
                content=image.manifest_bytes,
                headers={"Content-Type": image.media_type},
            )
            if response.status_code != 201:
                raise HarnessError(
                    f"PUT {image.repository}:{tag}: {response.status_code} {response.text}"
                )


def _auth(server: RegistryServer) -> httpx.BasicAuth | None:
    if server.auth == "token":
        raise HarnessError("put_manifest needs a registry without token auth")
    return (
        None if server.username is None else httpx.BasicAuth(server.username, server.password or "")
    )


# --- the sample set -------------------------------------------------------------

SIMPLE_FILES = {
    "etc/os-release": b'NAME="unpacked test"\nID=unpacked\nVERSION_ID=1\n',
    "hello.txt": b"hello, version 2\n",
    "bin/hello.sh": b"#!/bin/sh\necho hello\n",
    "data/extra.txt": b"added by the second layer\n",
}


def simple_layers() -> list[bytes]:
    """Two layers: the second replaces a file, deletes one and adds a directory."""
    base = tar_bytes(
        [
            TarEntry.dir("etc"),
            TarEntry.file("etc/os-release", SIMPLE_FILES["etc/os-release"]),
            TarEntry.file("hello.txt", b"hello, version 1\n"),
            TarEntry.file("removed.txt", b"deleted by the second layer\n"),
            TarEntry.dir("bin"),
            TarEntry.file("bin/hello.sh", SIMPLE_FILES["bin/hello.sh"], mode=0o755),
        ]
    )
    top = tar_bytes(
        [
            TarEntry.file("hello.txt", SIMPLE_FILES["hello.txt"]),
            TarEntry.whiteout("removed.txt"),
            TarEntry.dir("data"),
            TarEntry.file("data/extra.txt", SIMPLE_FILES["data/extra.txt"]),
        ]
    )
    return [base, top]


def _arch_image(layout: Path, platform: str) -> BuiltImage:
    layer = tar_bytes([TarEntry.file("etc/arch", platform.encode() + b"\n")])
    return build_image(layout, [layer], tag=platform.replace("/", "-"), platform=platform)


def push_samples(server: RegistryServer, workdir: Path) -> SampleImages:
    """Build every sample image under ``workdir`` and push it through ``server``."""
    layout = workdir / "samples-layout"
    simple_built = build_image(layout, simple_layers(), tag="simple")
    simple = push(server, simple_built, "test/simple:v1", files=SIMPLE_FILES)
    simple_docker = push(
        server, simple_built, "test/simple-docker:v1", format="v2s2", files=SIMPLE_FILES
    )
    arches = [_arch_image(layout, p) for p in ("linux/amd64", "linux/arm64/v8")]
    build_index(layout, arches, tag="multi")
    multi_ref = f"oci:{layout}:multi"
    skopeo_copy(multi_ref, f"docker://{server.host}/test/multi:oci", all=True)
    skopeo_copy(multi_ref, f"docker://{server.host}/test/multi:docker", all=True, format="v2s2")
    hello = build_image(layout, [tar_bytes([TarEntry.file("hello", b"public\n")])], tag="public")
    public = push(server, hello, "public/hello:latest", files={"hello": b"public\n"})
    return SampleImages(
        simple=simple,
        simple_docker=simple_docker,
        multi_oci=describe(server, "test/multi", "oci"),
        multi_docker=describe(server, "test/multi", "docker"),
        public=public,
        many_tags=_many_tags(server, hello),
    )


def _many_tags(server: RegistryServer, built: BuiltImage) -> SampleImage:
    tags = tuple(f"v{i:03d}" for i in range(MANY_TAGS))
    first = push(server, built, f"test/tags:{tags[0]}")
    put_manifest(server, first, tags[1:])
    return dataclasses.replace(first, tags=tags)
