"""Build OCI image layouts on disk, byte for byte reproducibly, without a registry.

``tar_bytes`` writes PAX tars with every entry type a layer can hold (including
non-UTF-8 names and binary xattrs); ``build_image`` and ``build_index`` write an
OCI image layout that ``skopeo copy oci:<layout>:<tag> ...`` can push.

Digests are plain ``"sha256:<hex>"`` strings so tests compare them with what
skopeo, umoci and the registry report without conversions.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import zstandard

FIXED_MTIME = 1_700_000_000
"""Default mtime of tar entries (2023-11-14), fixed so digests are stable."""

CREATED = "2024-01-01T00:00:00Z"

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

LAYER_MEDIA_TYPES = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}

DEFAULT_RUNTIME_CONFIG: Mapping[str, Any] = {
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
    "Cmd": ["/bin/sh"],
    "WorkingDir": "/",
    "Labels": {"org.example.test": "unpacked"},
}

EntryType = Literal["file", "dir", "symlink", "hardlink", "char", "block", "fifo"]

_TAR_TYPES: Mapping[str, bytes] = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
}
_DEFAULT_MODES = {"dir": 0o755, "symlink": 0o777, "char": 0o666, "block": 0o660, "fifo": 0o644}


def sha256(data: bytes) -> str:
    """``"sha256:<hex>"`` of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _text(name: str | bytes) -> str:
    # surrogateescape round-trips arbitrary bytes through tarfile, which then
    # writes them raw under a PAX ``hdrcharset=BINARY`` record.
    return name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) else name


@dataclass(frozen=True)
class TarEntry:
    """One tar member. ``name`` and ``linkname`` may be bytes for non-UTF-8 paths.

    ``mode`` defaults per type (0o644 files, 0o755 dirs, ...) and may carry
    setuid/setgid/sticky bits. ``xattrs`` become ``SCHILY.xattr.<name>`` PAX
    records. ``pax`` adds raw PAX records (str values; bytes are kept as bytes).
    """

    name: str | bytes
    type: EntryType = "file"
    data: bytes = b""
    mode: int | None = None
    uid: int = 0
    gid: int = 0
    mtime: int = FIXED_MTIME
    linkname: str | bytes = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    uname: str = ""
    gname: str = ""
    pax: Mapping[str, str | bytes] = field(default_factory=dict)

    @classmethod
    def file(cls, name: str | bytes, data: bytes = b"", mode: int = 0o644, **kw: Any) -> TarEntry:
        return cls(name, "file", data=data, mode=mode, **kw)

    @classmethod
    def dir(cls, name: str | bytes, mode: int = 0o755, **kw: Any) -> TarEntry:
        return cls(name, "dir", mode=mode, **kw)

    @classmethod
    def symlink(cls, name: str | bytes, target: str | bytes, **kw: Any) -> TarEntry:
        return cls(name, "symlink", linkname=target, **kw)

    @classmethod
    def hardlink(cls, name: str | bytes, target: str | bytes, **kw: Any) -> TarEntry:
        """A hard link to ``target``, a path as it appears in the same layer."""
        return cls(name, "hardlink", linkname=target, **kw)

    @classmethod
    def char(cls, name: str | bytes, major: int, minor: int, **kw: Any) -> TarEntry:
        return cls(name, "char", devmajor=major, devminor=minor, **kw)

    @classmethod
    def block(cls, name: str | bytes, major: int, minor: int, **kw: Any) -> TarEntry:
        return cls(name, "block", devmajor=major, devminor=minor, **kw)

    @classmethod
    def fifo(cls, name: str | bytes, **kw: Any) -> TarEntry:
        return cls(name, "fifo", **kw)

    @classmethod
    def whiteout(cls, path: str) -> TarEntry:
        """An AUFS whiteout deleting ``path`` (``dir/.wh.name``)."""
        head, _, base = path.rstrip("/").rpartition("/")
        return cls.file(f"{head}/.wh.{base}" if head else f".wh.{base}", mode=0o644)

    @classmethod
    def opaque(cls, directory: str) -> TarEntry:
        """An opaque marker hiding everything lower layers put in ``directory``."""
        return cls.file(f"{directory.rstrip('/')}/.wh..wh..opq", mode=0o644)

    def tarinfo(self) -> tarfile.TarInfo:
        """This entry as a ``TarInfo``, ready for ``TarFile.addfile``."""
        info = tarfile.TarInfo(_text(self.name))
        info.type = _TAR_TYPES[self.type]
        info.mode = self.mode if self.mode is not None else _DEFAULT_MODES.get(self.type, 0o644)
        info.uid, info.gid, info.uname, info.gname = self.uid, self.gid, self.uname, self.gname
        info.mtime = self.mtime
        info.linkname = _text(self.linkname)
        info.devmajor, info.devminor = self.devmajor, self.devminor
        info.size = len(self.data) if self.type == "file" else 0
        records = {k: _text(v) for k, v in self.pax.items()}
        for key, value in self.xattrs.items():
            records[f"SCHILY.xattr.{key}"] = _text(value)
        info.pax_headers = records
        return info


def tar_bytes(entries: Iterable[TarEntry]) -> bytes:
    """An uncompressed PAX tar of ``entries``, in the given order."""
    buffer = io.BytesIO()
    with tarfile.open(
        fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT, errors="surrogateescape"
    ) as tar:
        for entry in entries:
            tar.addfile(entry.tarinfo(), io.BytesIO(entry.data) if entry.type == "file" else None)
    return buffer.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    """``data`` compressed as ``"gzip"``, ``"zstd"`` or ``"none"``, deterministically."""
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    if compression == "none":
        return data
    raise ValueError(f"unknown compression {compression!r}")


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        """``"linux/arm64/v8"`` → Platform("linux", "arm64", "v8")."""
        parts = text.split("/")
        if len(parts) not in (2, 3):
            raise ValueError(f"platform {text!r} is not os/arch[/variant]")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)

    def as_json(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


@dataclass(frozen=True)
class BuiltImage:
    """An image written into an OCI layout by ``build_image``."""

    layout: Path
    tag: str
    manifest_digest: str
    manifest_bytes: bytes
    config_digest: str
    config_bytes: bytes
    layer_digests: tuple[str, ...]
    diff_ids: tuple[str, ...]
    layer_media_types: tuple[str, ...]
    layer_sizes: tuple[int, ...]
    platform: str

    @property
    def oci_ref(self) -> str:
        """The skopeo source name, ``oci:<layout>:<tag>``."""
        return f"oci:{self.layout}:{self.tag}"

    @property
    def manifest_size(self) -> int:
        return len(self.manifest_bytes)

    @property
    def config(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.config_bytes)
        return parsed

    def blob(self, digest: str) -> bytes:
        """The blob ``digest`` as stored in the layout."""
        return _blob_path(self.layout, digest).read_bytes()


def _canonical(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, hexpart = digest.partition(":")
    return layout / "blobs" / algorithm / hexpart


def write_blob(layout: Path, data: bytes) -> str:
    """Store ``data`` under ``blobs/sha256/`` of ``layout``; return its digest."""
    digest = sha256(data)
    path = _blob_path(layout, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_bytes(data)
    return digest


def _init_layout(layout: Path) -> None:
    layout.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    if not (layout / "index.json").exists():
        (layout / "index.json").write_bytes(
            _canonical({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
        )


def _tag_in_index(layout: Path, descriptor: Mapping[str, Any], tag: str) -> None:
    """Point ``tag`` at ``descriptor`` in index.json, replacing an older entry."""
    index = json.loads((layout / "index.json").read_bytes())
    keep = [
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag
    ]
    entry = dict(descriptor)
    entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
    index["manifests"] = [*keep, entry]
    (layout / "index.json").write_bytes(_canonical(index))


def _image_config(
    platform: Platform, diff_ids: Sequence[str], overrides: Mapping[str, Any] | None
) -> dict[str, Any]:
    runtime = dict(DEFAULT_RUNTIME_CONFIG)
    for key, value in (overrides or {}).items():
        if value is None:
            runtime.pop(key, None)
        else:
            runtime[key] = value
    return {
        "created": CREATED,
        **platform.as_json(),
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [
            {"created": CREATED, "created_by": f"tests/support/oci.py layer {i}"}
            for i in range(len(diff_ids))
        ],
    }


def build_image(
    layout: Path,
    layers: Sequence[bytes],
    *,
    tag: str = "latest",
    compression: str | Sequence[str] = "gzip",
    platform: str = "linux/amd64",
    config: Mapping[str, Any] | None = None,
) -> BuiltImage:
    """Write an image of uncompressed tar ``layers`` into ``layout`` under ``tag``.

    ``compression`` is one of ``"gzip"``, ``"zstd"``, ``"none"``, or one per
    layer. ``config`` overrides keys of the runtime config (Env, Entrypoint,
    Cmd, WorkingDir, Labels, ...); a ``None`` value removes the key.
    """
    kinds = [compression] * len(layers) if isinstance(compression, str) else list(compression)
    if len(kinds) != len(layers):
        raise ValueError(f"{len(kinds)} compressions for {len(layers)} layers")
    _init_layout(layout)
    parsed_platform = Platform.parse(platform)
    blobs = [compress(layer, kind) for layer, kind in zip(layers, kinds, strict=True)]
    layer_digests = tuple(write_blob(layout, blob) for blob in blobs)
    diff_ids = tuple(sha256(layer) for layer in layers)
    media_types = tuple(LAYER_MEDIA_TYPES[kind] for kind in kinds)
    config_bytes = _canonical(_image_config(parsed_platform, diff_ids, config))
    config_digest = write_blob(layout, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [
            {"mediaType": m, "digest": d, "size": len(b)}
            for m, d, b in zip(media_types, layer_digests, blobs, strict=True)
        ],
    }
    manifest_bytes = _canonical(manifest)
    manifest_digest = write_blob(layout, manifest_bytes)
    descriptor = {"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest_bytes)}
    _tag_in_index(layout, {**descriptor, "platform": parsed_platform.as_json()}, tag)
    return BuiltImage(
        layout=layout,
        tag=tag,
        manifest_digest=manifest_digest,
        manifest_bytes=manifest_bytes,
        config_digest=config_digest,
        config_bytes=config_bytes,
        layer_digests=layer_digests,
        diff_ids=diff_ids,
        layer_media_types=media_types,
        layer_sizes=tuple(len(b) for b in blobs),
        platform=str(parsed_platform),
    )


def index_bytes(images: Sequence[BuiltImage]) -> bytes:
    """The OCI image index listing ``images``, each with its platform."""
    return _canonical(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": image.manifest_digest,
                    "size": len(image.manifest_bytes),
                    "platform": Platform.parse(image.platform).as_json(),
                }
                for image in images
            ],
        }
    )


def build_index(layout: Path, images: Sequence[BuiltImage], *, tag: str) -> str:
    """Write an OCI index of ``images`` (already in ``layout``) under ``tag``; its digest."""
    for image in images:
        if image.layout != layout:
            raise ValueError(f"image {image.tag} lives in {image.layout}, not {layout}")
    data = index_bytes(images)
    digest = write_blob(layout, data)
    _tag_in_index(layout, {"mediaType": OCI_INDEX, "digest": digest, "size": len(data)}, tag)
    return digest
