"""Repository verification: is the published tree what the layout (DESIGN.md section 2) says?

    scan (read-only walk, under the repository lock) ─▶ Snapshot
    check (pure)                                      ─▶ Findings
    --repair: one transaction ─▶ scan ─▶ check ─▶ plan_repair (pure) ─▶ apply

The walk looks at the structure only: links, metadata records, layer records, the
``.flat`` and ``.layers`` fan-outs, catalog markers and the publisher's staging. It never
reads the files inside flat trees or ``layerfs`` (apart from the few Apptainer
directories where a temporary file could be left), so it stays cheap on repositories
of thousands of images.

Locking. The read-only check takes the repository lock of the ``dir:`` backend (waiting
like a transaction would) without opening a transaction, for two reasons: the walk
sees no commit half-way (``dir:`` publishes path by path, ``_base`` N1), and every
staging area found under ``.unpacked/transactions`` is then certainly stale — no
running transaction can own it. Opening a transaction instead would run the
publisher's recovery, which changes the repository; a check must not. ``--repair`` does
open one transaction: its recovery completes interrupted commits and deletes stale
staging, and all other fixes are recorded in it.

What ``--repair`` fixes, without the registry: origin.json sets (recomputed from the
manifests), missing catalog markers, absolute links that lead to a flat tree (made
relative), stale staging (the publisher's recovery), temporary files left in flat
trees, orphan flat trees (scheduled in remove-schedule.json, so garbage collection
removes them after the grace period; never deleted here). What it cannot fix needs a
re-conversion; for two of those it first removes what would make ``convert`` believe
the image is complete: a layer directory without ``layerfs`` (convert would reuse it)
and a manifest.json that contradicts status.json (convert would find it current).
"""

from __future__ import annotations

import enum
import logging
import os
import re
import stat
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from unpacked import layout
from unpacked.digest import Digest
from unpacked.errors import ConfigError, PublishError, UnpackedError
from unpacked.manifest import Manifest, parse_manifest
from unpacked.publish import Publisher, Transaction
from unpacked.publish._dir import PRIVATE_DIR, DirPublisher
from unpacked.publish._journal import JOURNAL_NAME
from unpacked.records import (
    ImageStatus,
    RemovalSchedule,
    origin_json,
    parse_layer_records,
    parse_origin,
)
from unpacked.reference import parse as parse_reference

logger = logging.getLogger(__name__)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_TRANSACTIONS = PurePosixPath(PRIVATE_DIR) / "transactions"
# What apptainer._sandbox names a file while replacing it; only ever in staging, so one
# in a published flat tree is a leftover.
_TEMP_SUFFIX = ".unpacked-new"
_APPTAINER_DIRS = (".singularity.d", ".singularity.d/env", ".singularity.d/actions")
ORPHAN_REFERENCE = ""
"""The ``reference`` of a schedule entry for a flat tree nothing referenced (as gc writes it)."""


class Kind(enum.StrEnum):
    """What is wrong; stable names for scripts reading ``--json``."""

    LINK_ABSOLUTE = "link-absolute"
    LINK_DANGLING = "link-dangling"
    LINK_MISMATCH = "link-mismatch"
    METADATA_MISSING = "metadata-missing"
    MANIFEST_INVALID = "manifest-invalid"
    STATUS_INVALID = "status-invalid"
    MANIFEST_MISMATCH = "manifest-mismatch"
    LAYER_MISSING = "layer-missing"
    LAYERFS_MISSING = "layerfs-missing"
    LAYER_RECORD_INVALID = "layer-record-invalid"
    ORIGIN_INVALID = "origin-invalid"
    ORIGIN_MISMATCH = "origin-mismatch"
    LAYER_ORPHAN = "layer-orphan"
    FLAT_ORPHAN = "flat-orphan"
    SCHEDULE_INVALID = "schedule-invalid"
    CATALOG_MISSING = "catalog-missing"
    TRANSACTION_STALE = "transaction-stale"
    TEMP_FILE = "temp-file"


class Remedy(enum.StrEnum):
    """Who can fix a finding: ``verify --repair``, a re-conversion, or a person."""

    REPAIR = "repair"
    RECONVERT = "reconvert"
    MANUAL = "manual"


@dataclass(frozen=True)
class WriteFile:
    path: PurePosixPath
    data: bytes


@dataclass(frozen=True)
class SetLink:
    path: PurePosixPath
    target: str


@dataclass(frozen=True)
class Remove:
    path: PurePosixPath


Change = WriteFile | SetLink | Remove
"""One change a repair records in its transaction."""


@dataclass(frozen=True)
class Schedule:
    """Put ``image_id`` on the removal schedule (merged into one write by ``plan_repair``)."""

    image_id: str


@dataclass(frozen=True)
class Finding:
    """One problem: its kind, the path (relative to the root) and a message naming the culprit.

    ``references`` are the images a re-conversion must cover; ``fix`` is what
    ``--repair`` records for it (None: nothing, or the publisher's recovery).
    """

    kind: Kind
    path: PurePosixPath
    message: str
    remedy: Remedy
    references: tuple[str, ...] = ()
    fix: Change | Schedule | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, object]:
        return {
            "kind": str(self.kind),
            "path": str(self.path),
            "message": self.message,
            "remedy": str(self.remedy),
            "references": list(self.references),
        }


@dataclass(frozen=True)
class VerifyOptions:
    skip_layers: bool = False
    """The repository is published with ``--skip-layers``: do not expect layer directories."""


# --- the snapshot: what the read-only walk saw -----------------------------------------


@dataclass(frozen=True)
class Broken:
    """A record that is missing or cannot be parsed, and why."""

    reason: str


@dataclass(frozen=True)
class LinkEntry:
    """A symbolic link of the public area or of ``.multiarch``.

    ``resolved`` is the existing directory inside the repository it leads to (None:
    nowhere, or outside). ``alias`` marks a ``.multiarch/<uname -m>`` architecture alias.
    """

    path: PurePosixPath
    target: str
    resolved: PurePosixPath | None
    alias: bool = False

    @property
    def reference(self) -> str:
        """The image name of the link (the part after ``.multiarch/<arch>/`` for those)."""
        if self.path.parts[0] == str(layout.MULTIARCH):
            return str(PurePosixPath(*self.path.parts[2:]))
        return str(self.path)


@dataclass(frozen=True)
class ImageEntry:
    """One ``.metadata/<name>/`` directory; ``manifest_digest`` is sha256 of the bytes."""

    name: str
    manifest: Manifest | Broken
    manifest_digest: str | None
    status: ImageStatus | Broken


@dataclass(frozen=True)
class LayerEntry:
    """One ``.layers/<l2>/<l>`` directory."""

    digest: str
    has_layerfs: bool
    origin: frozenset[str] | Broken
    records: Broken | None


@dataclass(frozen=True)
class AreaEntry:
    """A transaction area of the ``dir:`` backend; ``committing``: it holds a journal."""

    path: PurePosixPath
    committing: bool


@dataclass(frozen=True)
class Snapshot:
    links: tuple[LinkEntry, ...]
    images: tuple[ImageEntry, ...]
    flat_trees: frozenset[str]
    """Image ids (``sha256:<c>``) of the ``.flat/<c2>/<c>`` directories."""
    layers: tuple[LayerEntry, ...]
    schedule: RemovalSchedule | Broken
    catalog_dirs: tuple[tuple[PurePosixPath, bool], ...]
    """Directories that want a ``.cvmfscatalog`` marker, and whether they have one."""
    temp_files: tuple[PurePosixPath, ...]
    areas: tuple[AreaEntry, ...]


# --- scan: the only I/O of the check ---------------------------------------------------


def scan(root: Path, *, private: bool = True) -> Snapshot:
    """Walk the repository at ``root`` (never following a link); ``private``: the staging too."""
    flat_parents, flat_ids = _fanout(root, layout.FLAT)
    layer_parents, layer_hexes = _fanout(root, layout.LAYERS)
    layers = tuple(_layer_entry(root, hexdigest) for hexdigest in layer_hexes)
    return Snapshot(
        links=tuple(_links(root)),
        images=tuple(_image_entry(root, name) for name in _metadata_names(root)),
        flat_trees=frozenset(f"sha256:{c}" for c in flat_ids),
        layers=layers,
        schedule=_schedule(root),
        catalog_dirs=_catalog_dirs(root, flat_parents, flat_ids, layer_parents, layers),
        temp_files=tuple(path for c in flat_ids for path in _temp_files(root, c)),
        areas=tuple(_areas(root)) if private else (),
    )


def _real_dirs(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return sorted(
                (entry for entry in entries if entry.is_dir(follow_symlinks=False)),
                key=lambda entry: entry.name,
            )
    except (FileNotFoundError, NotADirectoryError):
        return []


def _fanout(root: Path, top: PurePosixPath) -> tuple[list[str], list[str]]:
    """The ``<d2>`` directories of a fan-out, and the ``<d>`` hex digests under them."""
    parents, digests = [], []
    for sub in _real_dirs(root / top):
        if len(sub.name) != 2:
            continue
        parents.append(sub.name)
        digests += [
            entry.name
            for entry in _real_dirs(Path(sub.path))
            if _HEX64.fullmatch(entry.name) and entry.name.startswith(sub.name)
        ]
    return parents, digests


def _links(root: Path) -> Iterator[LinkEntry]:
    real_root = os.path.realpath(root)
    for entry in _entries(root):
        if entry.name.startswith(".") or entry.name == str(layout.PODMAN_STORE):
            continue
        if entry.is_symlink():
            yield _link_entry(root, real_root, PurePosixPath(entry.name))
        elif entry.is_dir(follow_symlinks=False):
            yield from _links_under(root, real_root, PurePosixPath(entry.name))
    for entry in _entries(root / layout.MULTIARCH):
        relative = layout.MULTIARCH / entry.name
        if entry.is_symlink():
            yield _link_entry(root, real_root, relative, alias=True)
        elif entry.is_dir(follow_symlinks=False):
            yield from _links_under(root, real_root, relative)


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _links_under(root: Path, real_root: str, relative: PurePosixPath) -> Iterator[LinkEntry]:
    for entry in _entries(root / relative):
        path = relative / entry.name
        if entry.is_symlink():
            yield _link_entry(root, real_root, path)
        elif entry.is_dir(follow_symlinks=False):
            yield from _links_under(root, real_root, path)


def _link_entry(
    root: Path, real_root: str, path: PurePosixPath, *, alias: bool = False
) -> LinkEntry:
    target = os.readlink(root / path)
    real = os.path.realpath(root / path)
    inside = os.path.commonpath([real, real_root]) == real_root and real != real_root
    resolved = PurePosixPath(os.path.relpath(real, real_root)) if inside else None
    if resolved is not None and not os.path.isdir(real):
        resolved = None
    return LinkEntry(path, target, resolved, alias)


def _metadata_names(root: Path) -> Iterator[str]:
    """The ``<registry>/<repository>:<tag>`` names with a directory under ``.metadata``.

    Below the registry level a ``:`` or ``@`` can only be the tag or digest separator
    (repository components cannot contain them), so such a directory is an image's.
    Images of further platforms live under ``.multiarch/<arch>/`` (whose ``<arch>`` may
    contain a ``:`` too, as in ``arm64:v8``); their names keep that prefix.
    """
    stack = [PurePosixPath()]
    while stack:
        relative = stack.pop()
        for entry in reversed(_real_dirs(root / layout.METADATA / relative)):
            path = relative / entry.name
            name_parts = path.parts[2:] if path.parts[0] == str(layout.MULTIARCH) else path.parts
            if len(name_parts) >= 2 and (":" in entry.name or "@" in entry.name):
                yield str(path)
            else:
                stack.append(path)


def _read(path: Path) -> bytes | Broken:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return Broken("missing")
    except OSError as exc:
        return Broken(f"unreadable: {exc.strerror or exc}")


def _image_entry(root: Path, name: str) -> ImageEntry:
    directory = root / layout.METADATA / name
    raw = _read(directory / "manifest.json")
    status = _read(directory / "status.json")
    return ImageEntry(
        name,
        raw if isinstance(raw, Broken) else _parsed_manifest(raw, f"{name}/manifest.json"),
        None if isinstance(raw, Broken) else str(Digest.of(raw)),
        status if isinstance(status, Broken) else _parsed_status(status),
    )


def _parsed_manifest(raw: bytes, what: str) -> Manifest | Broken:
    try:
        return parse_manifest(raw, what=what)
    except UnpackedError as exc:
        return Broken(str(exc).removeprefix(f"{what}: "))


def _parsed_status(raw: bytes) -> ImageStatus | Broken:
    try:
        return ImageStatus.from_bytes(raw)
    except ValueError as exc:
        return Broken(str(exc))


def _layer_entry(root: Path, hexdigest: str) -> LayerEntry:
    digest = Digest("sha256", hexdigest)
    origin = _read(root / layout.layer_origin_file(digest))
    records = _read(root / layout.layer_record_file(digest))
    return LayerEntry(
        str(digest),
        _is_real_dir(root / layout.layerfs_dir(digest)),
        origin if isinstance(origin, Broken) else _parsed_origin(origin),
        records if isinstance(records, Broken) else _records_problem(records),
    )


def _parsed_origin(raw: bytes) -> frozenset[str] | Broken:
    try:
        return parse_origin(raw, what="origin.json")
    except ValueError as exc:
        return Broken(str(exc).removeprefix("origin.json: "))


def _records_problem(raw: bytes) -> Broken | None:
    try:
        parse_layer_records(raw, what="layers.json")
    except ValueError as exc:
        return Broken(str(exc).removeprefix("layers.json: "))
    return None


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _schedule(root: Path) -> RemovalSchedule | Broken:
    raw = _read(root / layout.REMOVE_SCHEDULE)
    if isinstance(raw, Broken):
        return RemovalSchedule() if raw.reason == "missing" else raw
    try:
        return RemovalSchedule.from_bytes(raw)
    except ValueError as exc:
        return Broken(str(exc))


def _catalog_dirs(
    root: Path,
    flat_parents: list[str],
    flat_ids: list[str],
    layer_parents: list[str],
    layers: tuple[LayerEntry, ...],
) -> tuple[tuple[PurePosixPath, bool], ...]:
    wanted = [layout.FLAT, layout.LAYERS, layout.PODMAN_STORE]
    wanted += [layout.PODMAN_STORE / sub for sub in ("overlay", "overlay-images", "overlay-layers")]
    wanted += [layout.FLAT / c2 for c2 in flat_parents]
    wanted += [layout.flat_dir(Digest("sha256", c)) for c in flat_ids]
    wanted += [layout.LAYERS / l2 for l2 in layer_parents]
    wanted += [
        layout.layerfs_dir(Digest.parse(layer.digest)) for layer in layers if layer.has_layerfs
    ]
    return tuple(
        (directory, os.path.lexists(root / directory / layout.CATALOG_MARKER))
        for directory in sorted(wanted)
        if _is_real_dir(root / directory)
    )


def _temp_files(root: Path, hexdigest: str) -> Iterator[PurePosixPath]:
    flat = layout.flat_dir(Digest("sha256", hexdigest))
    for directory in _APPTAINER_DIRS:
        for entry in _entries(root / flat / directory):
            if entry.name.endswith(_TEMP_SUFFIX) and not entry.is_dir(follow_symlinks=False):
                yield flat / directory / entry.name


def _areas(root: Path) -> Iterator[AreaEntry]:
    for entry in _entries(root / _TRANSACTIONS):
        committing = os.path.lexists(Path(entry.path) / JOURNAL_NAME)
        yield AreaEntry(_TRANSACTIONS / entry.name, committing)


# --- check: pure -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Usage:
    """Which images use which layers, as far as the manifests on disk tell.

    ``tolerated``: images on disk (a flat tree, a schedule entry or a status.json names
    them) whose manifest is not known — gone with a moved tag, broken, or contradicting
    its status — so an origin.json may list them anywhere: nothing can say they do not
    use the layer. Scheduled ids count even without a flat tree: a repository published
    with --skip-flat has none, and their layers must wait for the grace period too.
    """

    users: Mapping[str, frozenset[str]]
    references: Mapping[str, tuple[str, ...]]
    tolerated: frozenset[str]


def _usage(snapshot: Snapshot) -> _Usage:
    users: dict[str, set[str]] = defaultdict(set)
    references: dict[str, set[str]] = defaultdict(set)
    known: set[str] = set()
    unknown: set[str] = set(snapshot.flat_trees) | _scheduled_ids(snapshot)
    for image in snapshot.images:
        manifest, status = image.manifest, image.status
        if isinstance(manifest, Manifest):
            image_id = str(manifest.config.digest)
            known.add(image_id)
            for layer in manifest.layers:
                users[str(layer.digest)].add(image_id)
                references[str(layer.digest)].add(image.name)
        if isinstance(status, ImageStatus):
            unknown.add(status.image_id)
    return _Usage(
        users={digest: frozenset(ids) for digest, ids in users.items()},
        references={digest: tuple(sorted(refs)) for digest, refs in references.items()},
        tolerated=frozenset(unknown - known),
    )


def _scheduled_ids(snapshot: Snapshot) -> set[str]:
    schedule = snapshot.schedule
    return set(schedule.image_ids()) if isinstance(schedule, RemovalSchedule) else set()


def check(snapshot: Snapshot, options: VerifyOptions = VerifyOptions()) -> tuple[Finding, ...]:
    """Every problem of the repository ``snapshot`` shows, sorted by path."""
    usage = _usage(snapshot)
    findings = [
        *_check_links(snapshot),
        *_check_images(snapshot),
        *_check_layers(snapshot, usage, options),
        *_check_flat_trees(snapshot),
        *_check_markers(snapshot),
        *_check_leftovers(snapshot),
    ]
    return tuple(sorted(findings, key=lambda f: (str(f.path), f.kind)))


def _flat_id(path: PurePosixPath | None) -> str | None:
    """The image id if ``path`` is ``.flat/<c2>/<c>``."""
    if path is None or len(path.parts) != 3 or path.parts[0] != str(layout.FLAT):
        return None
    _, c2, c = path.parts
    return f"sha256:{c}" if _HEX64.fullmatch(c) and c.startswith(c2) else None


def _check_links(snapshot: Snapshot) -> Iterator[Finding]:
    for link in snapshot.links:
        finding = _check_alias(link) if link.alias else _check_link(link)
        if finding is not None:
            yield finding


def _check_link(link: LinkEntry) -> Finding | None:
    image_id = _flat_id(link.resolved)
    refs = (link.reference,)
    if link.target.startswith("/"):
        if image_id is None:
            return Finding(
                Kind.LINK_ABSOLUTE,
                link.path,
                f"public link {link.path} has the absolute target {link.target!r}, "
                "which leads to no flat tree of this repository",
                Remedy.RECONVERT,
                refs,
            )
        relative = layout.relative_target(link.path, layout.flat_dir(Digest.parse(image_id)))
        return Finding(
            Kind.LINK_ABSOLUTE,
            link.path,
            f"public link {link.path} has the absolute target {link.target!r}; "
            f"links must be relative so the tree works wherever it is mounted ({relative})",
            Remedy.REPAIR,
            refs,
            SetLink(link.path, str(relative)),
        )
    if image_id is None:
        where = "nothing" if link.resolved is None else f"{link.resolved}, not a flat tree"
        return Finding(
            Kind.LINK_DANGLING,
            link.path,
            f"public link {link.path} -> {link.target} leads to {where}",
            Remedy.RECONVERT,
            refs,
        )
    return None


def _check_alias(link: LinkEntry) -> Finding | None:
    resolved = link.resolved
    in_multiarch = resolved is not None and resolved.parent == layout.MULTIARCH
    if link.target.startswith("/") or not in_multiarch:
        kind = Kind.LINK_ABSOLUTE if link.target.startswith("/") else Kind.LINK_DANGLING
        return Finding(
            kind,
            link.path,
            f"architecture alias {link.path} -> {link.target} must be a relative link "
            f"to a directory of {layout.MULTIARCH}",
            Remedy.MANUAL,
        )
    return None


def _is_public(link: LinkEntry) -> bool:
    """A ``<registry>/<repository>:<tag>`` (or ``@<digest>``) link, not one of ``.multiarch``."""
    name = link.path.name
    return (
        link.path.parts[0] != str(layout.MULTIARCH)
        and len(link.path.parts) >= 2
        and (":" in name or "@" in name)
    )


def _check_images(snapshot: Snapshot) -> Iterator[Finding]:
    links = {link.reference: link for link in snapshot.links if _is_public(link)}
    names = {image.name for image in snapshot.images}
    for image in snapshot.images:
        yield from _check_image(image, links.get(image.name))
    for link in links.values():
        if link.reference in names:
            continue
        yield Finding(
            Kind.METADATA_MISSING,
            layout.METADATA / link.reference,
            f"public link {link.path} has no metadata (.metadata/{link.reference}/"
            "manifest.json and status.json)",
            Remedy.RECONVERT,
            (link.reference,),
        )


def _check_image(image: ImageEntry, link: LinkEntry | None) -> Iterator[Finding]:
    directory = layout.METADATA / image.name
    refs = (image.name,)
    if isinstance(image.manifest, Broken):
        yield Finding(
            Kind.MANIFEST_INVALID,
            directory / "manifest.json",
            f"{image.name}: manifest.json {image.manifest.reason}",
            Remedy.RECONVERT,
            refs,
        )
    status_problem = _status_problem(image)
    if status_problem is not None or isinstance(image.status, Broken):
        yield Finding(
            Kind.STATUS_INVALID,
            directory / "status.json",
            f"{image.name}: status.json {status_problem}",
            Remedy.RECONVERT,
            refs,
        )
        return
    if isinstance(image.manifest, Manifest):
        yield from _check_manifest(image, image.manifest, image.status)
    linked = _flat_id(link.resolved) if link is not None else None
    if link is not None and linked is not None and linked != image.status.image_id:
        yield Finding(
            Kind.LINK_MISMATCH,
            link.path,
            f"public link {link.path} leads to image {linked}, but its status.json "
            f"says {image.status.image_id}",
            Remedy.RECONVERT,
            refs,
        )


def _status_problem(image: ImageEntry) -> str | None:
    if isinstance(image.status, Broken):
        return image.status.reason
    try:
        name = parse_reference(image.status.reference).public_name
    except UnpackedError as exc:
        return f"records an invalid reference: {exc}"
    if image.name.startswith(f"{layout.MULTIARCH}/"):
        # .multiarch/<arch>/<name>: an image of a further platform keeps its metadata there
        name = f"{layout.MULTIARCH}/{image.name.split('/')[1]}/{name}"
    if name != image.name:
        return f"records {image.status.reference}, whose metadata belongs in .metadata/{name}"
    return None


def _check_manifest(
    image: ImageEntry, manifest: Manifest, status: ImageStatus
) -> Iterator[Finding]:
    problems = []
    if str(manifest.config.digest) != status.image_id:
        problems.append(
            f"its config is {manifest.config.digest} but status.json says imageId {status.image_id}"
        )
    if image.manifest_digest != status.manifest_digest:
        problems.append(
            f"its digest is {image.manifest_digest} but status.json says manifestDigest "
            f"{status.manifest_digest}"
        )
    if problems:
        path = layout.METADATA / image.name / "manifest.json"
        yield Finding(
            Kind.MANIFEST_MISMATCH,
            path,
            f"{image.name}: manifest.json does not belong to the image: {'; '.join(problems)}",
            Remedy.RECONVERT,
            (image.name,),
            Remove(path),
        )


def _check_layers(snapshot: Snapshot, usage: _Usage, options: VerifyOptions) -> Iterator[Finding]:
    present = {layer.digest for layer in snapshot.layers}
    if not options.skip_layers:
        for digest in sorted(set(usage.users) - present):
            refs = usage.references[digest]
            yield Finding(
                Kind.LAYER_MISSING,
                layout.layer_dir(Digest.parse(digest)),
                f"layer {digest} of {', '.join(refs)} is missing",
                Remedy.RECONVERT,
                refs,
            )
    for layer in snapshot.layers:
        yield from _check_layer(layer, usage)


def _check_layer(layer: LayerEntry, usage: _Usage) -> Iterator[Finding]:
    digest = Digest.parse(layer.digest)
    refs = usage.references.get(layer.digest, ())
    if not layer.has_layerfs:
        yield Finding(
            Kind.LAYERFS_MISSING,
            layout.layerfs_dir(digest),
            f"layer {layer.digest} has no layerfs directory"
            + (f" (used by {', '.join(refs)})" if refs else " (and no image uses it)"),
            # A layer directory without layerfs is useless, and convert would reuse it
            # as it is: removing it is what makes a re-conversion unpack the layer.
            Remedy.RECONVERT if refs else Remedy.REPAIR,
            refs,
            Remove(layout.layer_dir(digest)),
        )
        return
    if refs and isinstance(layer.records, Broken):
        yield Finding(
            Kind.LAYER_RECORD_INVALID,
            layout.layer_record_file(digest),
            f"layer {layer.digest}: layers.json {layer.records.reason}; it cannot be rebuilt "
            f"without the registry, and convert reuses a layer it finds: remove "
            f"{layout.layer_dir(digest)}, then re-convert {', '.join(refs)}",
            Remedy.MANUAL,
            refs,
        )
    finding = _check_origin(layer, usage)
    if finding is not None:
        yield finding


def _check_origin(layer: LayerEntry, usage: _Usage) -> Finding | None:
    digest = Digest.parse(layer.digest)
    path = layout.layer_origin_file(digest)
    users = usage.users.get(layer.digest, frozenset())
    if isinstance(layer.origin, Broken):
        return Finding(
            Kind.ORIGIN_INVALID,
            path,
            f"layer {layer.digest}: origin.json {layer.origin.reason}",
            Remedy.REPAIR,
            fix=WriteFile(path, origin_json(users)),
        )
    kept = layer.origin & usage.tolerated
    if not users and not kept:
        if not layer.origin:
            return None  # waiting for garbage collection
        return Finding(
            Kind.LAYER_ORPHAN,
            path,
            f"layer {layer.digest} is used by no image on disk, but its origin.json lists "
            f"{', '.join(sorted(layer.origin))}, so garbage collection would keep it forever",
            Remedy.REPAIR,
            fix=WriteFile(path, origin_json(())),
        )
    problems = _origin_problems(layer.origin, users, usage.tolerated)
    if not problems:
        return None
    return Finding(
        Kind.ORIGIN_MISMATCH,
        path,
        f"layer {layer.digest}: origin.json {'; '.join(problems)}",
        Remedy.REPAIR,
        usage.references.get(layer.digest, ()),
        WriteFile(path, origin_json(users | kept)),
    )


def _origin_problems(
    origin: frozenset[str], users: frozenset[str], tolerated: frozenset[str]
) -> list[str]:
    problems = []
    missing = users - origin
    extra = origin - users - tolerated
    if missing:
        problems.append(f"misses {', '.join(sorted(missing))}, whose manifest lists the layer")
    if extra:
        problems.append(f"lists {', '.join(sorted(extra))}, which does not use the layer")
    return problems


def _check_flat_trees(snapshot: Snapshot) -> Iterator[Finding]:
    schedule = snapshot.schedule
    if isinstance(schedule, Broken):
        yield Finding(
            Kind.SCHEDULE_INVALID,
            layout.REMOVE_SCHEDULE,
            f"{layout.REMOVE_SCHEDULE}: {schedule.reason}; --repair rebuilds it from the flat "
            "trees nothing links to (their grace period starts again)",
            Remedy.REPAIR,
        )
    referenced = _scheduled_ids(snapshot)
    referenced |= {i for i in (_flat_id(link.resolved) for link in snapshot.links) if i}
    referenced |= {
        image.status.image_id for image in snapshot.images if isinstance(image.status, ImageStatus)
    }
    for image_id in sorted(snapshot.flat_trees - referenced):
        yield Finding(
            Kind.FLAT_ORPHAN,
            layout.flat_dir(Digest.parse(image_id)),
            f"flat tree of image {image_id} has no public link, no status.json and no entry "
            f"in {layout.REMOVE_SCHEDULE}: garbage collection would never remove it",
            Remedy.REPAIR,
            fix=Schedule(image_id),
        )


def _check_markers(snapshot: Snapshot) -> Iterator[Finding]:
    for directory, present in snapshot.catalog_dirs:
        if not present:
            marker = directory / layout.CATALOG_MARKER
            yield Finding(
                Kind.CATALOG_MISSING,
                marker,
                f"{directory} has no {layout.CATALOG_MARKER} (nested CernVM-FS catalog marker)",
                Remedy.REPAIR,
                fix=WriteFile(marker, b""),
            )


def _check_leftovers(snapshot: Snapshot) -> Iterator[Finding]:
    for area in snapshot.areas:
        what = (
            "an interrupted commit (journal present); the next transaction completes it"
            if area.committing
            else "staging of a transaction that never committed; the next transaction deletes it"
        )
        yield Finding(Kind.TRANSACTION_STALE, area.path, f"{area.path}: {what}", Remedy.REPAIR)
    for path in snapshot.temp_files:
        yield Finding(
            Kind.TEMP_FILE,
            path,
            f"{path}: a temporary file left while writing the Apptainer files",
            Remedy.REPAIR,
            fix=Remove(path),
        )


# --- repair: a pure plan, applied in one transaction -------------------------------------


def plan_repair(snapshot: Snapshot, findings: Iterable[Finding], when: str) -> tuple[Change, ...]:
    """The changes that fix the repairable ``findings`` of ``snapshot``; ``when`` is now."""
    findings = list(findings)
    changes: list[Change] = [
        f.fix for f in findings if isinstance(f.fix, WriteFile | SetLink | Remove)
    ]
    orphans = [f.fix.image_id for f in findings if isinstance(f.fix, Schedule)]
    schedule = snapshot.schedule
    if orphans or isinstance(schedule, Broken):
        updated = RemovalSchedule() if isinstance(schedule, Broken) else schedule
        for image_id in orphans:
            updated = updated.add(image_id, ORPHAN_REFERENCE, when)
        changes.append(WriteFile(layout.REMOVE_SCHEDULE, updated.to_bytes()))
    return tuple(changes)


def apply(changes: Iterable[Change], tx: Transaction) -> None:
    """Record ``changes`` in ``tx``."""
    for change in changes:
        logger.info("repair: %s", describe(change))
        match change:
            case WriteFile(path, data):
                tx.write_file(path, data)
            case SetLink(path, target):
                tx.set_symlink(path, target)
            case Remove(path):
                tx.remove(path)


def describe(change: Change) -> str:
    """One line saying what ``change`` does."""
    match change:
        case WriteFile(path, _):
            return f"write {path}"
        case SetLink(path, target):
            return f"link {path} -> {target}"
        case Remove(path):
            return f"remove {path}"
    raise AssertionError(change)  # pragma: no cover - the union is closed


# --- the edge: reports, locking, the transaction -----------------------------------------


@dataclass(frozen=True)
class VerifyReport:
    repository: str
    findings: tuple[Finding, ...]

    @property
    def clean(self) -> bool:
        return not self.findings

    def references_to_reconvert(self) -> tuple[str, ...]:
        """Images that need ``convert-single-image``, sorted."""
        return tuple(
            sorted(
                {
                    ref
                    for finding in self.findings
                    if finding.remedy is Remedy.RECONVERT
                    for ref in finding.references
                }
            )
        )


@dataclass(frozen=True)
class RepairReport:
    before: VerifyReport
    changes: tuple[Change, ...]
    recovered: tuple[PurePosixPath, ...]
    """Staging areas the publisher's recovery dealt with when the repair opened."""
    after: VerifyReport


def _utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _locked(publisher: Publisher, timeout: float) -> AbstractContextManager[None]:
    """Hold the repository lock without opening a transaction (so without recovery)."""
    if not isinstance(publisher, DirPublisher):
        raise ConfigError(f"{publisher.spec}: verify supports dir: repositories only")
    return publisher.locked(lock_timeout=timeout)


def _scan(publisher: Publisher, *, private: bool) -> Snapshot:
    try:
        return scan(publisher.root, private=private)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        raise PublishError(f"{publisher.spec}: cannot read{where}: {exc.strerror or exc}") from exc


def verify_repository(
    publisher: Publisher,
    *,
    options: VerifyOptions = VerifyOptions(),
    lock_timeout: float = 600.0,
) -> VerifyReport:
    """Check the repository; changes nothing."""
    with _locked(publisher, lock_timeout):
        snapshot = _scan(publisher, private=True)
    report = VerifyReport(publisher.spec, check(snapshot, options))
    logger.info("%s: %d finding(s)", publisher.spec, len(report.findings))
    return report


def repair_repository(
    publisher: Publisher,
    *,
    options: VerifyOptions = VerifyOptions(),
    lock_timeout: float = 600.0,
    now: Callable[[], str] = _utc_now,
) -> RepairReport:
    """Check, fix what needs no registry in one transaction, and check again."""
    before = verify_repository(publisher, options=options, lock_timeout=lock_timeout)
    changes: tuple[Change, ...] = ()
    if any(f.fix is not None or f.remedy is Remedy.REPAIR for f in before.findings):
        with publisher.transaction(lock_timeout=lock_timeout) as tx:
            # Recovery has run; our own staging area is the only one left, so skip them.
            snapshot = _scan(publisher, private=False)
            changes = plan_repair(snapshot, check(snapshot, options), now())
            apply(changes, tx)
    recovered = tuple(f.path for f in before.findings if f.kind is Kind.TRANSACTION_STALE)
    after = verify_repository(publisher, options=options, lock_timeout=lock_timeout)
    return RepairReport(before, changes, recovered, after)
