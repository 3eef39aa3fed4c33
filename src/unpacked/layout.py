"""Path arithmetic for the repository layout (DESIGN.md section 2). No I/O.

The layout is a contract with programs we do not control (Apptainer, podman, the CVMFS
containerd snapshotter, users' job scripts), so every path of it is computed here and
nowhere else. All paths are relative to the repository root, as ``PurePosixPath``.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from unpacked.digest import Digest
from unpacked.platform import Platform
from unpacked.reference import Reference

FLAT = PurePosixPath(".flat")
LAYERS = PurePosixPath(".layers")
METADATA = PurePosixPath(".metadata")
MULTIARCH = PurePosixPath(".multiarch")
PODMAN_STORE = PurePosixPath("podmanStore")
PODMAN_SUBDIRS = ("overlay", "overlay-images", "overlay-layers")
"""The containers/storage directories of ``podmanStore`` (each a catalog of its own)."""
PRIVATE_DIR = PurePosixPath(".unpacked")
"""Reserved for the publisher's own files (the ``dir:`` backend's lock and staging):
never published, skipped by readers."""
CATALOG_MARKER = ".cvmfscatalog"
REMOVE_SCHEDULE = METADATA / "remove-schedule.json"

# Names inside an image's metadata directory.
STATUS_NAME = "status.json"
MANIFEST_NAME = "manifest.json"

# Names inside a layer directory ``.layers/<l2>/<l>``.
LAYERFS = "layerfs"
LAYER_METADATA = ".metadata"
ORIGIN_NAME = "origin.json"
LAYER_RECORDS_NAME = "layers.json"
CONTENT_INDEX = "content.gz"
"""Name of a layer's content index in its ``.metadata`` (next to origin.json, outside
``layerfs``, which must hold the layer's files only)."""

# uname -m spellings users type, mapped to the OCI architecture names used in .multiarch.
ARCH_ALIASES: dict[str, str] = {
    "x86_64": "amd64",
    "aarch64": "arm64:v8",
    "armv7l": "arm:v7",
    "armv6l": "arm:v6",
    "i686": "386",
    "i386": "386",
}


def _sha256_hex(digest: Digest) -> str:
    # The layout's super-directories assume sha256; anything else would silently create a
    # second, incompatible naming scheme.
    if digest.algorithm != "sha256":
        raise ValueError(f"repository layout needs sha256 digests, got {digest}")
    return digest.hex


def _fanout(top: PurePosixPath, digest: Digest) -> PurePosixPath:
    hexdigest = _sha256_hex(digest)
    return top / hexdigest[:2] / hexdigest


def flat_dir(config_digest: Digest) -> PurePosixPath:
    """``.flat/<c2>/<c>``: the unpacked root file system of the image with this config."""
    return _fanout(FLAT, config_digest)


def layer_dir(layer_digest: Digest) -> PurePosixPath:
    """``.layers/<l2>/<l>``, keyed by the layer digest as written in the manifest."""
    return _fanout(LAYERS, layer_digest)


def layerfs_dir(layer_digest: Digest) -> PurePosixPath:
    """``.layers/<l2>/<l>/layerfs``: the path the CVMFS snapshotter looks up."""
    return layer_dir(layer_digest) / LAYERFS


def layer_metadata_dir(layer_digest: Digest) -> PurePosixPath:
    """``.layers/<l2>/<l>/.metadata``: the layer's records, next to (never inside) ``layerfs``."""
    return layer_dir(layer_digest) / LAYER_METADATA


def layer_origin_file(layer_digest: Digest) -> PurePosixPath:
    """``origin.json``: the config digests of the images that use this layer."""
    return layer_metadata_dir(layer_digest) / ORIGIN_NAME


def layer_record_file(layer_digest: Digest) -> PurePosixPath:
    """``layers.json``: the podman-style record of this layer."""
    return layer_metadata_dir(layer_digest) / LAYER_RECORDS_NAME


def layer_content_index(layer_digest: Digest) -> PurePosixPath:
    """``content.gz``: the content index of the layer's ``layerfs`` (``verify --deep``)."""
    return layer_metadata_dir(layer_digest) / CONTENT_INDEX


def public_link(reference: Reference) -> PurePosixPath:
    """``<registry>/<repository>:<tag>`` (or ``@sha256:<d>`` when pinned only by digest)."""
    return PurePosixPath(reference.public_name)


def multiarch_link(platform: Platform, reference: Reference) -> PurePosixPath:
    """``.multiarch/<arch>/<registry>/<repository>:<tag>``."""
    return MULTIARCH / multiarch_name(platform) / reference.public_name


def multiarch_aliases(platform: Platform) -> tuple[str, ...]:
    """The ``uname -m`` names that link to the platform's ``.multiarch`` directory."""
    name = multiarch_name(platform)
    return tuple(alias for alias, target in ARCH_ALIASES.items() if target == name)


def multiarch_metadata_dir(platform: Platform, reference: Reference) -> PurePosixPath:
    """``.metadata/.multiarch/<arch>/<registry>/<repository>:<tag>``: metadata of an image
    published for a platform other than the repository's default (it has only a
    ``.multiarch`` link)."""
    return METADATA / MULTIARCH / multiarch_name(platform) / reference.public_name


def multiarch_name(platform: Platform) -> str:
    """OCI architecture name with the variant after a colon: ``amd64``, ``arm64:v8``."""
    if platform.variant:
        return f"{platform.architecture}:{platform.variant}"
    return platform.architecture


def relative_target(link: PurePosixPath, target: PurePosixPath) -> PurePosixPath:
    """The relative symlink text that makes ``link`` point at ``target``.

    Relative, so the tree works wherever it is mounted (/cvmfs/<repo>, an NFS path, a
    copy on a laptop).
    """
    depth = len(link.parent.parts)
    return PurePosixPath(*([".."] * depth), target) if depth else target


def metadata_dir(reference: Reference) -> PurePosixPath:
    """``.metadata/<registry>/<repository>:<tag>``."""
    return METADATA / reference.public_name


def manifest_file(reference: Reference) -> PurePosixPath:
    """The registry's manifest bytes, as served."""
    return metadata_dir(reference) / MANIFEST_NAME


def status_file(reference: Reference) -> PurePosixPath:
    """Our status record of the image (digest, platform, check/change times, last error)."""
    return metadata_dir(reference) / STATUS_NAME


def catalog_dirs(config_digests: list[Digest], layer_digests: list[Digest]) -> list[PurePosixPath]:
    """Directories that get a ``.cvmfscatalog`` marker (DESIGN.md section 8), sorted."""
    dirs = {FLAT, LAYERS, PODMAN_STORE}
    dirs |= {PODMAN_STORE / sub for sub in PODMAN_SUBDIRS}
    for config in config_digests:
        path = flat_dir(config)
        dirs |= {path, path.parent}
    for layer in layer_digests:
        path = layerfs_dir(layer)
        dirs |= {path, path.parent.parent}
    return sorted(dirs)
