"""Checks of what a registry answered: manifest digests, sizes against caps and
descriptors, tag lists and their pagination, an image's layers, config and platform.
Pure but for reading a response's body."""

from __future__ import annotations

import json

import httpx

from unpacked import mediatype
from unpacked.digest import Digest
from unpacked.errors import NotFoundError, RegistryProtocolError, VerificationError
from unpacked.manifest import Descriptor, ImageConfig, Index, Manifest
from unpacked.platform import Platform
from unpacked.reference import Reference

from ._auth import origin
from ._errors import Subject
from ._link import next_link


def verify_manifest(
    raw: bytes, expected: Digest | None, announced: str | None, where: str
) -> Digest:
    """The digest of ``raw``, checked against the reference's or else the registry's."""
    if expected is None and announced:
        try:
            expected = Digest.parse(announced.strip())
        except ValueError as exc:
            raise RegistryProtocolError(f"{where}: bad Docker-Content-Digest ({exc})") from None
    actual = Digest.of(raw, expected.algorithm if expected is not None else "sha256")
    if expected is not None and actual != expected:
        raise VerificationError(f"{where}: digest mismatch, got {actual}, expected {expected}")
    return actual


def read_capped(response: httpx.Response, cap: int, subject: Subject) -> bytes:
    def too_large(size: str) -> RegistryProtocolError:
        return RegistryProtocolError(
            f"{subject.what} in registry {subject.registry}: the answer is {size} bytes, "
            f"more than the {cap} accepted"
        )

    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > cap:
        raise too_large(declared)
    body = bytearray()
    for chunk in response.iter_bytes():
        body += chunk
        if len(body) > cap:
            raise too_large(f"over {len(body)}")
    return bytes(body)


def check_length(response: httpx.Response, descriptor: Descriptor, subject: Subject) -> None:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) != descriptor.size:
        raise VerificationError(
            f"{subject.what} in registry {subject.registry}: served with {declared} bytes, "
            f"expected {descriptor.size}"
        )


def parse_tags(body: bytes, subject: Subject) -> list[str]:
    where = f"{subject.what} in registry {subject.registry}"
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise RegistryProtocolError(f"{where}: answer is not JSON") from None
    tags = document.get("tags") if isinstance(document, dict) else None
    if tags is None and isinstance(document, dict):
        return []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise RegistryProtocolError(f"{where}: 'tags' is not a list of strings")
    return tags


def next_page(
    links: list[str], url: httpx.URL, seen: set[httpx.URL], subject: Subject
) -> httpx.URL | None:
    where = f"{subject.what} in registry {subject.registry}"
    try:
        following = next_link(links, url)
    except ValueError as exc:
        raise RegistryProtocolError(f"{where}: {exc}") from None
    if following is None:
        return None
    if origin(following) != origin(url):
        # Our token and credentials are for this origin only.
        raise RegistryProtocolError(f"{where}: next page is on another host ({following.host})")
    if following in seen:
        raise RegistryProtocolError(f"{where}: pagination loops back to {following}")
    return following


def display(ref: Reference) -> str:
    """``repository[:tag][@digest]``; messages add "in registry <name>" themselves."""
    name = ref.repository
    if ref.tag is not None:
        name += f":{ref.tag}"
    if ref.digest is not None:
        name += f"@{ref.digest}"
    return name


def check_manifest(ref: Reference, manifest: Manifest) -> None:
    what = f"image {display(ref)} in registry {ref.registry}"
    if manifest.config.media_type not in mediatype.CONFIG_TYPES:
        raise RegistryProtocolError(
            f"{what} is not a container image (config media type {manifest.config.media_type})"
        )
    for number, layer in enumerate(manifest.layers, 1):
        if layer.media_type not in mediatype.LAYER_TYPES:
            raise RegistryProtocolError(
                f"{what}: layer {number} ({layer.digest}) has media type {layer.media_type}, "
                "which is not a layer type we can unpack"
            )


def check_config(ref: Reference, manifest: Manifest, config: ImageConfig) -> None:
    if len(config.diff_ids) != len(manifest.layers):
        raise RegistryProtocolError(
            f"image {display(ref)} in registry {ref.registry}: the config lists "
            f"{len(config.diff_ids)} diff_ids for {len(manifest.layers)} layers"
        )


def image_platform(
    ref: Reference,
    chosen: Descriptor,
    config: ImageConfig,
    wanted: Platform,
    index: Index | None,
) -> Platform:
    """The image's platform, after checking that the config agrees with what was chosen."""
    what = f"image {display(ref)} in registry {ref.registry}"
    if index is None:
        if not wanted.matches(config.platform):
            raise NotFoundError(f"{what} is for {config.platform} only; {wanted} was asked for")
        return config.platform
    listed = chosen.platform or wanted
    if not listed.matches(config.platform):
        raise RegistryProtocolError(
            f"{what}: the index lists {chosen.digest} as {listed} but its config says "
            f"{config.platform}"
        )
    return listed
