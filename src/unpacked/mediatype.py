"""Media types of the Docker schema 2 and OCI image formats, and how to read a layer's.

Only names and lookups live here; nothing parses content.
"""

from __future__ import annotations

from enum import StrEnum

# Manifests and indexes (what a tag or digest can point to).
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_MANIFEST_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

# Image configurations.
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"

# Layers.
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_FOREIGN_LAYER_TAR = "application/vnd.docker.image.rootfs.foreign.diff.tar"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_NONDISTRIBUTABLE = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_NONDISTRIBUTABLE_GZIP = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_NONDISTRIBUTABLE_ZSTD = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"

MANIFEST_TYPES = frozenset({DOCKER_MANIFEST, OCI_MANIFEST})
"""Image manifests: one config and a list of layers."""

INDEX_TYPES = frozenset({DOCKER_MANIFEST_LIST, OCI_INDEX})
"""Indexes (manifest lists): one manifest per platform."""

SCHEMA1_TYPES = frozenset({DOCKER_MANIFEST_SCHEMA1, DOCKER_MANIFEST_SCHEMA1_SIGNED})
"""Docker's deprecated schema 1; recognised only to reject it with a clear message."""

CONFIG_TYPES = frozenset({DOCKER_CONFIG, OCI_CONFIG})

ACCEPT = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)
"""What we ask a registry for, in order of preference (the ``Accept`` header)."""


class Compression(StrEnum):
    """How a layer's tar stream is compressed."""

    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


_LAYER_COMPRESSION = {
    DOCKER_LAYER: Compression.GZIP,
    DOCKER_LAYER_TAR: Compression.NONE,
    DOCKER_LAYER_ZSTD: Compression.ZSTD,
    DOCKER_FOREIGN_LAYER: Compression.GZIP,
    DOCKER_FOREIGN_LAYER_TAR: Compression.NONE,
    OCI_LAYER: Compression.NONE,
    OCI_LAYER_GZIP: Compression.GZIP,
    OCI_LAYER_ZSTD: Compression.ZSTD,
    OCI_LAYER_NONDISTRIBUTABLE: Compression.NONE,
    OCI_LAYER_NONDISTRIBUTABLE_GZIP: Compression.GZIP,
    OCI_LAYER_NONDISTRIBUTABLE_ZSTD: Compression.ZSTD,
}

LAYER_TYPES = frozenset(_LAYER_COMPRESSION)
"""Every layer media type we can unpack."""

FOREIGN_LAYER_TYPES = frozenset(
    {
        DOCKER_FOREIGN_LAYER,
        DOCKER_FOREIGN_LAYER_TAR,
        OCI_LAYER_NONDISTRIBUTABLE,
        OCI_LAYER_NONDISTRIBUTABLE_GZIP,
        OCI_LAYER_NONDISTRIBUTABLE_ZSTD,
    }
)
"""Layers that a registry may decline to store (their descriptor can carry ``urls``)."""


def layer_compression(media_type: str) -> Compression | None:
    """The compression of a layer media type; None if it is not a layer type we know."""
    return _LAYER_COMPRESSION.get(media_type)


def essence(content_type: str) -> str:
    """The media type of a ``Content-Type`` value without parameters, lower case."""
    return content_type.split(";", 1)[0].strip().lower()
