"""Options, placement and results of a conversion. No I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from unpacked import layout, repository
from unpacked.digest import Digest
from unpacked.layers import SizeLimit
from unpacked.manifest import Descriptor
from unpacked.platform import DEFAULT, Platform
from unpacked.reference import Reference


class Outcome(enum.Enum):
    ADDED = "added"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


MAX_AUTO_UNPACK_WORKERS = 4
"""The automatic choice stays modest: each worker adds its memory (about 45 MiB) and its
share of the disk traffic; ``unpack_workers`` may ask for more."""


@dataclass(frozen=True)
class ConvertOptions:
    """How to publish an image.

    ``public_link``: write ``<registry>/<repository>:<tag>`` (the default platform's image);
    ``multiarch``: write ``.multiarch/<arch>/<registry>/<repository>:<tag>`` too. An image of
    a further platform has only the ``.multiarch`` link, and its metadata under
    ``.metadata/.multiarch/<arch>/``.
    """

    platform: Platform = DEFAULT
    skip_flat: bool = False
    skip_layers: bool = False
    public_link: bool = True
    multiarch: bool = False
    record_check: bool = True
    """Update an unchanged image's lastCheck at once. A batch passes False and records the
    checks of all its unchanged images in one transaction (``record_checks``)."""
    download_workers: int = 3
    unpack_workers: int | None = None
    """New layers of one image unpacked at once, each in a worker process; 1: one after the
    other, in this process; None: one per CPU, at most ``MAX_AUTO_UNPACK_WORKERS``, for
    images with enough new content to pay for starting them."""
    lock_timeout: float = 600.0
    max_layer_size: SizeLimit = field(default_factory=SizeLimit)
    """How much one layer may decompress to (against decompression bombs)."""
    content_index: bool = True
    """Write each new layer's content index (``verify --deep``); off only to measure its cost."""


@dataclass(frozen=True)
class Placement:
    """Where one image's metadata and links go in the repository layout."""

    metadata: PurePosixPath
    links: tuple[PurePosixPath, ...]
    aliases: tuple[tuple[PurePosixPath, str], ...] = ()
    """``.multiarch/<uname -m name>`` links to their OCI-named directory."""

    @property
    def status_file(self) -> PurePosixPath:
        return self.metadata / layout.STATUS_NAME

    @property
    def manifest_file(self) -> PurePosixPath:
        return self.metadata / layout.MANIFEST_NAME


def placement(reference: Reference, options: ConvertOptions) -> Placement:
    """The metadata directory and links of ``reference`` published with ``options``."""
    if options.public_link:
        metadata = layout.metadata_dir(reference)
    else:
        metadata = layout.multiarch_metadata_dir(options.platform, reference)
    if options.skip_flat:
        return Placement(metadata, ())
    links = [layout.public_link(reference)] if options.public_link else []
    aliases: list[tuple[PurePosixPath, str]] = []
    if options.multiarch:
        links.append(layout.multiarch_link(options.platform, reference))
        name = layout.multiarch_name(options.platform)
        aliases = [
            (layout.MULTIARCH / alias, name) for alias in layout.multiarch_aliases(options.platform)
        ]
    return Placement(metadata, tuple(links), tuple(aliases))


@dataclass(frozen=True)
class LayerPlan:
    """One position of the image's layer list, as planned before anything is unpacked.

    ``new``: the layer is unpacked into a layer directory of its own (its first position
    in the image, not stored yet, and layer directories are written).
    """

    index: int
    descriptor: Descriptor
    diff_id: Digest
    new: bool


@dataclass(frozen=True)
class LayerResult:
    """One position of the image's layer list, ready: where its tree is, its whiteout
    form and diff size, and whether the repository held it already (``reused``)."""

    plan: LayerPlan
    tree: Path
    whiteouts: str
    diff_size: int
    reused: bool


@dataclass(frozen=True)
class Stacked:
    """What the layer scheduling produced: one result per layer position (none when the
    layers went straight into the flat tree), the warnings, the bytes downloaded."""

    layers: tuple[LayerResult, ...] = ()
    warnings: tuple[str, ...] = ()
    downloaded: int = 0

    def digests(self, *, reused: bool) -> tuple[Digest, ...]:
        """The layers unpacked (or reused), each once, in image order."""
        found = (r.plan.descriptor.digest for r in self.layers if r.reused == reused)
        return tuple(dict.fromkeys(found))


@dataclass(frozen=True)
class ConvertResult:
    reference: Reference
    outcome: Outcome
    digest: Digest
    image_id: Digest
    platform: Platform
    public_link: PurePosixPath | None
    """The first link written (the public link, else the ``.multiarch`` one), if any."""
    layers_unpacked: tuple[Digest, ...] = ()
    layers_reused: tuple[Digest, ...] = ()
    bytes_downloaded: int = 0
    warnings: tuple[str, ...] = ()
    seconds: float = 0.0


def utc_now() -> str:
    """The current time as status.json writes it (UTC, seconds)."""
    return repository.utc_now()
