"""Descriptors, manifests, indexes and image configurations, parsed from bytes. No I/O.

Every parse function validates what it reads (schemaVersion 2, required fields,
digests, non-negative integer sizes) and raises ``RegistryProtocolError`` naming the
document (``what``, e.g. "manifest sha256:… of ghcr.io/org/app") and the offending
field (``layers[2].digest``). Docker schema 1 manifests are rejected outright: they
carry no config digest and no diff_ids to verify layers against.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from unpacked import mediatype
from unpacked.digest import Digest
from unpacked.errors import NotFoundError, RegistryProtocolError
from unpacked.platform import Platform

_EMPTY: Mapping[str, str] = MappingProxyType({})
_GENERIC_CONTENT_TYPES = frozenset(
    {"", "application/json", "text/plain", "application/octet-stream", "binary/octet-stream"}
)
_SCHEMA1_HINT = (
    "Docker schema 1 manifests are not supported (they cannot be verified layer by layer); "
    "push the image again with a current docker, podman or skopeo"
)


@dataclass(frozen=True)
class Descriptor:
    """A reference to content by media type, digest and size (OCI descriptor)."""

    media_type: str
    digest: Digest
    size: int
    platform: Platform | None = None
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)

    def as_json(self) -> dict[str, Any]:
        """The descriptor as an OCI JSON object."""
        out: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
        }
        if self.platform is not None:
            out["platform"] = _platform_json(self.platform)
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@dataclass(frozen=True)
class Manifest:
    """An image manifest: one config and the layers, base layer first."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)


@dataclass(frozen=True)
class Index:
    """An image index (Docker manifest list): one manifest per platform."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)

    def images(self) -> tuple[Descriptor, ...]:
        """The entries that are runnable images (skips attestations and nested indexes)."""
        return tuple(
            d
            for d in self.manifests
            if d.media_type in mediatype.MANIFEST_TYPES
            and d.platform is not None
            and d.platform.os != "unknown"
        )

    def platforms(self) -> tuple[Platform, ...]:
        """The platforms this index has images for, in index order, without repeats."""
        return tuple(dict.fromkeys(d.platform for d in self.images() if d.platform is not None))

    def select(self, platform: Platform, *, what: str = "index") -> Descriptor:
        """The manifest for ``platform``: an exact match, else the most generic compatible one.

        Raises ``NotFoundError`` listing the platforms the index offers.
        """
        images = self.images()
        for descriptor in images:
            if descriptor.platform == platform:
                return descriptor
        compatible = [d for d in images if d.platform is not None and platform.matches(d.platform)]
        if compatible:
            # Prefer no variant, then the lowest one (amd64 v1 runs where v3 may not).
            return min(compatible, key=lambda d: _variant_rank(d.platform))
        available = ", ".join(str(p) for p in self.platforms()) or "none"
        raise NotFoundError(f"{what} has no image for platform {platform} (available: {available})")


@dataclass(frozen=True)
class History:
    """One entry of an image's build history."""

    created: str | None = None
    created_by: str | None = None
    author: str | None = None
    comment: str | None = None
    empty_layer: bool = False


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image configuration that running and publishing need.

    ``entrypoint`` and ``cmd`` are None when the image does not set them, which is
    not the same as an empty list (an explicit reset).
    """

    architecture: str
    os: str
    diff_ids: tuple[Digest, ...]
    variant: str | None = None
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    working_dir: str = ""
    labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY, hash=False)
    user: str = ""
    created: str | None = None
    history: tuple[History, ...] = ()
    stop_signal: str | None = None
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()

    @property
    def platform(self) -> Platform:
        return Platform(self.os, self.architecture, self.variant)


def parse_manifest_or_index(
    raw: bytes, content_type: str | None = None, *, what: str = "manifest"
) -> Manifest | Index:
    """Parse what a registry served for a manifest request.

    ``content_type`` is the ``Content-Type`` the registry sent; when it names a
    manifest type and the document declares a ``mediaType`` too, the two must agree.
    Generic types (``application/json``) defer to the document, whose shape decides
    when it declares nothing (as old OCI manifests do).
    """
    media_type, obj = _decode(raw, content_type, what)
    if media_type in mediatype.INDEX_TYPES:
        return _index_from(obj, media_type)
    return _manifest_from(obj, media_type)


def parse_manifest(
    raw: bytes, content_type: str | None = None, *, what: str = "manifest"
) -> Manifest:
    """Parse an image manifest; an index here is an error."""
    parsed = parse_manifest_or_index(raw, content_type, what=what)
    if not isinstance(parsed, Manifest):
        raise RegistryProtocolError(f"{what}: expected an image manifest, got {parsed.media_type}")
    return parsed


def parse_index(raw: bytes, content_type: str | None = None, *, what: str = "index") -> Index:
    """Parse an image index or Docker manifest list; a manifest here is an error."""
    parsed = parse_manifest_or_index(raw, content_type, what=what)
    if not isinstance(parsed, Index):
        raise RegistryProtocolError(f"{what}: expected an image index, got {parsed.media_type}")
    return parsed


def parse_image_config(raw: bytes, *, what: str = "image config") -> ImageConfig:
    """Parse an image configuration (Docker or OCI; the JSON is the same)."""
    obj = _Object(_load_json(raw, what), "", what)
    rootfs = obj.required_object("rootfs")
    if rootfs.text("type") != "layers":
        raise rootfs.error("type", "expected 'layers'")
    container = obj.optional_object("config")
    run = _run_settings(container) if container is not None else {}
    return ImageConfig(
        architecture=obj.required_text("architecture"),
        os=obj.required_text("os"),
        variant=obj.text("variant") or None,
        diff_ids=tuple(rootfs.digests("diff_ids")),
        created=obj.text("created"),
        history=tuple(_history(item) for item in obj.objects("history")),
        **run,
    )


def _run_settings(config: _Object) -> dict[str, Any]:
    return {
        "env": config.strings("Env"),
        "entrypoint": config.command("Entrypoint"),
        "cmd": config.command("Cmd"),
        "working_dir": config.text("WorkingDir") or "",
        "labels": config.string_map("Labels"),
        "user": config.text("User") or "",
        "stop_signal": config.text("StopSignal") or None,
        "exposed_ports": tuple(config.key_set("ExposedPorts")),
        "volumes": tuple(config.key_set("Volumes")),
    }


def _history(item: _Object) -> History:
    return History(
        created=item.text("created"),
        created_by=item.text("created_by"),
        author=item.text("author"),
        comment=item.text("comment"),
        empty_layer=item.boolean("empty_layer"),
    )


def _decode(raw: bytes, content_type: str | None, what: str) -> tuple[str, _Object]:
    obj = _Object(_load_json(raw, what), "", what)
    served = mediatype.essence(content_type or "")
    declared = obj.text("mediaType")
    _check_schema_version(obj, served, declared)
    if served in _GENERIC_CONTENT_TYPES:
        served = ""
    if served and declared and served != declared:
        raise RegistryProtocolError(
            f"{what}: served as {served} but its mediaType field says {declared}"
        )
    media_type = served or declared or _guess_media_type(obj)
    if media_type not in mediatype.MANIFEST_TYPES | mediatype.INDEX_TYPES:
        raise RegistryProtocolError(
            f"{what}: media type {media_type} is not an image manifest or index"
        )
    return media_type, obj


def _check_schema_version(obj: _Object, served: str, declared: str | None) -> None:
    version = obj.value("schemaVersion")
    schema1 = type(version) is int and version == 1
    if schema1 or served in mediatype.SCHEMA1_TYPES or declared in mediatype.SCHEMA1_TYPES:
        raise RegistryProtocolError(f"{obj.what}: {_SCHEMA1_HINT}")
    if type(version) is not int or version != 2:
        raise obj.error("schemaVersion", f"expected 2, got {version!r}")


def _guess_media_type(obj: _Object) -> str:
    if obj.has("manifests"):
        return mediatype.OCI_INDEX
    if obj.has("config") or obj.has("layers"):
        return mediatype.OCI_MANIFEST
    raise RegistryProtocolError(
        f"{obj.what}: neither a manifest nor an index (no mediaType, config or manifests)"
    )


def _manifest_from(obj: _Object, media_type: str) -> Manifest:
    return Manifest(
        media_type=media_type,
        config=_descriptor(obj.required_object("config")),
        layers=tuple(_descriptor(item) for item in obj.objects("layers", required=True)),
        annotations=obj.string_map("annotations"),
    )


def _index_from(obj: _Object, media_type: str) -> Index:
    return Index(
        media_type=media_type,
        manifests=tuple(_descriptor(item) for item in obj.objects("manifests", required=True)),
        annotations=obj.string_map("annotations"),
    )


def _descriptor(obj: _Object) -> Descriptor:
    platform = obj.optional_object("platform")
    return Descriptor(
        media_type=obj.required_text("mediaType"),
        digest=obj.digest("digest"),
        size=obj.size("size"),
        platform=_platform(platform) if platform is not None else None,
        urls=obj.strings("urls"),
        annotations=obj.string_map("annotations"),
    )


def _platform(obj: _Object) -> Platform:
    return Platform(
        obj.required_text("os"), obj.required_text("architecture"), obj.text("variant") or None
    )


def _platform_json(platform: Platform) -> dict[str, str]:
    out = {"architecture": platform.architecture, "os": platform.os}
    if platform.variant:
        out["variant"] = platform.variant
    return out


def _variant_rank(platform: Platform | None) -> tuple[bool, str]:
    variant = platform.variant if platform is not None else None
    return (variant is not None, variant or "")


def _load_json(raw: bytes, what: str) -> object:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise RegistryProtocolError(f"{what}: not valid JSON ({exc})") from None


class _Object:
    """A JSON object with typed, validating accessors; errors name the field's path."""

    def __init__(self, value: object, path: str, what: str) -> None:
        if not isinstance(value, dict):
            raise RegistryProtocolError(f"{what}: {path or 'document'}: expected a JSON object")
        self._data: dict[str, object] = value
        self.path = path
        self.what = what

    def error(self, key: str, problem: str) -> RegistryProtocolError:
        return RegistryProtocolError(f"{self.what}: {self._at(key)}: {problem}")

    def _at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return self._data.get(key) is not None

    def value(self, key: str) -> object:
        return self._data.get(key)

    def text(self, key: str) -> str | None:
        value = self._data.get(key)
        if value is not None and not isinstance(value, str):
            raise self.error(key, "expected a string")
        return value

    def required_text(self, key: str) -> str:
        value = self.text(key)
        if not value:
            raise self.error(key, "missing")
        return value

    def boolean(self, key: str) -> bool:
        value = self._data.get(key, False)
        if not isinstance(value, bool):
            raise self.error(key, "expected true or false")
        return value

    def size(self, key: str) -> int:
        value = self._data.get(key)
        if value is None:
            raise self.error(key, "missing")
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise self.error(key, f"expected a non-negative integer, got {value!r}")
        return value

    def digest(self, key: str) -> Digest:
        return self._parse_digest(self.required_text(key), self._at(key))

    def digests(self, key: str) -> list[Digest]:
        texts = self.strings(key)
        return [self._parse_digest(t, f"{self._at(key)}[{i}]") for i, t in enumerate(texts)]

    def _parse_digest(self, text: str, at: str) -> Digest:
        try:
            return Digest.parse(text)
        except ValueError as exc:
            raise RegistryProtocolError(f"{self.what}: {at}: {exc}") from None

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._data.get(key)
        if value is None:
            return ()
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(key, "expected a list of strings")
        return tuple(value)

    def command(self, key: str) -> tuple[str, ...] | None:
        # Docker's strslice accepts a bare string for Entrypoint and Cmd.
        value = self._data.get(key)
        if value is None:
            return None
        return (value,) if isinstance(value, str) else self.strings(key)

    def string_map(self, key: str) -> Mapping[str, str]:
        value = self._data.get(key)
        if value is None:
            return _EMPTY
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self.error(key, "expected an object of strings")
        return MappingProxyType(dict(value))

    def key_set(self, key: str) -> list[str]:
        value = self._data.get(key)
        if value is None:
            return []
        if not isinstance(value, dict):
            raise self.error(key, "expected an object")
        return sorted(value)

    def optional_object(self, key: str) -> _Object | None:
        value = self._data.get(key)
        return None if value is None else _Object(value, self._at(key), self.what)

    def required_object(self, key: str) -> _Object:
        obj = self.optional_object(key)
        if obj is None:
            raise self.error(key, "missing")
        return obj

    def objects(self, key: str, *, required: bool = False) -> list[_Object]:
        value = self._data.get(key)
        if value is None and not required:
            return []
        if not isinstance(value, list):
            raise self.error(key, "expected a list" if value is not None else "missing")
        return [_Object(item, f"{self._at(key)}[{i}]", self.what) for i, item in enumerate(value)]
