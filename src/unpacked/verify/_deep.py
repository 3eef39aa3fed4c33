"""``verify --deep``: are the files of every layer and flat tree still what was unpacked?

Flat trees share inodes with ``layerfs`` and with other images' flat trees, so a runtime
given a writable root (``podman run --rootfs``, a read-write ``crun`` bundle) changes
every image that links the file it writes. Each layer's content index (``contentindex``,
written when the layer was unpacked) says what its ``layerfs`` must hold; composed in
the image's layer order, the way overlayfs and ``layers.merge_layers`` read the stack
(whiteouts delete, opaque directories hide what is below, the upper entry wins), the
indexes say what its flat tree must hold, apart from the Apptainer files and bind
points the conversion adds.

    scan (verify._scan) + walk every tree, hashing each inode once ─▶ DeepReport
    --repair: one transaction removes the damaged layers and flat trees ─▶ the images
              that use them are converted again from the registry (convert_image)

A layer converted before content indexes existed has none: a notice, not a problem.
"""

from __future__ import annotations

import enum
import logging
from collections import ChainMap, Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol

from unpacked import layout, repository
from unpacked.apptainer import BIND_POINTS, LINKS, PLACEHOLDERS
from unpacked.contentindex import (
    ROOT,
    ContentIndex,
    Entry,
    InodeEntries,
    compose,
    from_bytes,
    index_tree,
)
from unpacked.digest import Digest
from unpacked.errors import UnpackedError
from unpacked.manifest import Manifest
from unpacked.publish import Publisher
from unpacked.records import ImageStatus, Whiteouts
from unpacked.verify._model import Snapshot
from unpacked.verify._scan import scan

logger = logging.getLogger(__name__)

_SANDBOX_DIR = ".singularity.d"
_EXTRA_KINDS: dict[str, str] = {
    **{name: "l" for name in LINKS},
    **{path: "d" for path in BIND_POINTS},
    **{path.rsplit("/", 1)[0]: "d" for path in BIND_POINTS if "/" in path},
    **{path: "f" for path in PLACEHOLDERS},
}
"""What the Apptainer sandbox creates in a flat tree when the image has none, and its type."""


class DeepKind(enum.StrEnum):
    """Stable names for scripts reading ``--json``."""

    CHANGED = "content-changed"
    ADDED = "content-added"
    MISSING = "content-missing"
    INDEX_INVALID = "content-index-invalid"
    NO_INDEX = "no-content-index"


@dataclass(frozen=True)
class DeepFinding:
    """One file that differs (or a tree that cannot be checked), and the images it affects.

    ``tree`` is the ``layerfs`` or flat tree (relative to the root), ``path`` the entry in
    it; ``layer`` / ``image_id`` say which of the two it is.
    """

    kind: DeepKind
    tree: PurePosixPath
    path: str
    message: str
    references: tuple[str, ...] = ()
    layer: str | None = None
    image_id: str | None = None

    @property
    def notice(self) -> bool:
        return self.kind is DeepKind.NO_INDEX

    def to_json(self) -> dict[str, object]:
        return {
            "kind": str(self.kind),
            "tree": str(self.tree),
            "path": self.path,
            "message": self.message,
            "references": list(self.references),
            "layer": self.layer,
            "imageId": self.image_id,
        }


@dataclass(frozen=True)
class DeepReport:
    repository: str
    findings: tuple[DeepFinding, ...]
    checked_layers: int = 0
    checked_flat_trees: int = 0

    @property
    def problems(self) -> tuple[DeepFinding, ...]:
        return tuple(f for f in self.findings if not f.notice)

    @property
    def notices(self) -> tuple[DeepFinding, ...]:
        return tuple(f for f in self.findings if f.notice)

    @property
    def clean(self) -> bool:
        return not self.problems

    @property
    def damaged_layers(self) -> frozenset[str]:
        return frozenset(f.layer for f in self.problems if f.layer is not None)

    @property
    def damaged_flat_trees(self) -> frozenset[str]:
        return frozenset(f.image_id for f in self.problems if f.image_id is not None)


# --- what the repository says: layers of each image, images of each layer -----------------


@dataclass(frozen=True)
class _Images:
    layers: Mapping[str, tuple[str, ...]]
    """Image id to its layer digests, in order (from a manifest on disk)."""
    names: Mapping[str, tuple[str, ...]]
    """Image id to the names (``.metadata`` paths) of the images published as it."""
    users: Mapping[str, frozenset[str]]
    """Layer digest to the ids of the images using it (manifests and origin.json)."""

    def references(self, image_ids: Iterable[str]) -> tuple[str, ...]:
        return tuple(sorted({name for i in image_ids for name in self.names.get(i, ())}))


def _images(snapshot: Snapshot) -> _Images:
    layers: dict[str, tuple[str, ...]] = {}
    names: dict[str, set[str]] = {}
    users: dict[str, set[str]] = {}
    for image in snapshot.images:
        if isinstance(image.manifest, Manifest):
            image_id = str(image.manifest.config.digest)
            layers[image_id] = tuple(str(layer.digest) for layer in image.manifest.layers)
            names.setdefault(image_id, set()).add(image.name)
            for digest in layers[image_id]:
                users.setdefault(digest, set()).add(image_id)
        elif isinstance(image.status, ImageStatus):
            names.setdefault(image.status.image_id, set()).add(image.name)
    for layer in snapshot.layers:
        if isinstance(layer.origin, frozenset):
            users.setdefault(layer.digest, set()).update(layer.origin)
    return _Images(
        layers,
        {i: tuple(sorted(n)) for i, n in names.items()},
        {d: frozenset(u) for d, u in users.items()},
    )


# --- comparing ------------------------------------------------------------------------------


def differences(expected: ContentIndex, actual: ContentIndex) -> list[tuple[DeepKind, str, str]]:
    """``(kind, path, what)`` for each entry that is not as expected, sorted by path."""
    found = []
    for path, want in expected.items():
        have = actual.get(path)
        if have == want:
            continue
        if have is None:
            found.append((DeepKind.MISSING, path, f"missing (was a {_describe(want)})"))
        else:
            what = "changed: " + ", ".join(have.differences(want))
            found.append((DeepKind.CHANGED, path, what))
    for path in actual.keys() - expected.keys():
        found.append((DeepKind.ADDED, path, f"added ({_describe(actual[path])})"))
    return sorted(found, key=lambda item: item[1])


def _describe(entry: Entry) -> str:
    return {"f": "file", "d": "directory", "l": "symlink"}.get(entry.kind, "special file")


def expected_flat(
    composed: ContentIndex, actual: ContentIndex
) -> tuple[ContentIndex, ContentIndex]:
    """Both indexes without what the conversion adds to a flat tree: ``.singularity.d``
    (replaced whatever the image had), and the links, bind points and placeholders the
    image lacks when they have the type the sandbox gives them. ``.`` is not compared."""

    def ours(path: str) -> bool:
        return path == _SANDBOX_DIR or path.startswith(_SANDBOX_DIR + "/")

    expected = {p: _comparable(e) for p, e in composed.items() if not ours(p)}
    have = {
        p: _comparable(e)
        for p, e in actual.items()
        if p != ROOT and not ours(p) and not (p not in expected and _EXTRA_KINDS.get(p) == e.kind)
    }
    return expected, have


def _comparable(entry: Entry) -> Entry:
    # The merge gives directories the metadata of the topmost layer; opaqueness is a
    # layer's property only.
    return entry._replace(extra="") if entry.kind == "d" and entry.extra else entry


# --- the walk -------------------------------------------------------------------------------


@dataclass
class _Checker:
    root: Path
    images: _Images
    indexes: dict[str, ContentIndex | None] = field(default_factory=dict)
    known: dict[str, InodeEntries] = field(default_factory=dict)
    """Per layer still needed: its inodes' entries, which its images' flat trees link."""
    wh_files: dict[str, bool] = field(default_factory=dict)
    findings: list[DeepFinding] = field(default_factory=list)

    def layer(self, digest: str) -> None:
        parsed = Digest.parse(digest)
        tree = layout.layerfs_dir(parsed)
        refs = self.images.references(self.images.users.get(digest, ()))
        expected = self._load_index(digest, tree, refs)
        self.indexes[digest] = expected
        self.wh_files[digest] = self._wh_files(parsed)
        if expected is None:
            return
        actual = index_tree(self.root / tree, self.known.setdefault(digest, {}))
        for kind, path, what in differences(expected, actual):
            self.findings.append(
                DeepFinding(
                    kind,
                    tree,
                    path,
                    f"layer {digest}: {path} {what}; affects {_names(refs)}",
                    refs,
                    layer=digest,
                )
            )

    def _load_index(
        self, digest: str, tree: PurePosixPath, refs: tuple[str, ...]
    ) -> ContentIndex | None:
        path = layout.layer_content_index(Digest.parse(digest))
        try:
            return from_bytes((self.root / path).read_bytes(), what=str(path))
        except FileNotFoundError:
            self.findings.append(
                DeepFinding(
                    DeepKind.NO_INDEX,
                    tree,
                    ".",
                    f"layer {digest} has no content index (converted before they existed): "
                    "its files and the flat trees of its images are not checked",
                    refs,
                )
            )
        except (OSError, ValueError) as exc:
            self.findings.append(
                DeepFinding(DeepKind.INDEX_INVALID, tree, ".", str(exc), refs, layer=digest)
            )
        return None

    def _wh_files(self, digest: Digest) -> bool:
        try:
            records = repository.layer_records(self.root, digest)
        except (OSError, ValueError):
            return False
        return any(record.whiteouts is Whiteouts.KEEP for record in records)

    def forget(self, digest: str) -> None:
        self.indexes.pop(digest, None)
        self.known.pop(digest, None)

    def flat(self, image_id: str) -> None:
        tree = layout.flat_dir(Digest.parse(image_id))
        refs = self.images.references([image_id])
        layers = self.images.layers.get(image_id)
        indexes = _all_present([self.indexes.get(d) for d in layers or ()])
        if layers is None or indexes is None:
            why = (
                "no manifest on disk lists its layers"
                if layers is None
                else "a layer of it has no content index"
            )
            message = f"flat tree of image {image_id} is not checked: {why}"
            self.findings.append(DeepFinding(DeepKind.NO_INDEX, tree, ".", message, refs))
            return
        composed = compose(zip(indexes, (self.wh_files[d] for d in layers), strict=True))
        known = ChainMap({}, *(self.known.get(d, {}) for d in layers))
        expected, actual = expected_flat(composed, index_tree(self.root / tree, known))
        for kind, path, what in differences(expected, actual):
            message = f"flat tree of image {image_id} ({_names(refs)}): {path} {what}"
            self.findings.append(DeepFinding(kind, tree, path, message, refs, image_id=image_id))


def _all_present(indexes: list[ContentIndex | None]) -> list[ContentIndex] | None:
    present = [index for index in indexes if index is not None]
    return present if len(present) == len(indexes) else None


def _names(refs: tuple[str, ...]) -> str:
    return ", ".join(refs) if refs else "no published image"


def check_content(root: Path, snapshot: Snapshot, spec: str = "") -> DeepReport:
    """Walk every layer and flat tree of the repository at ``root``; changes nothing.

    Image by image, its layers first (each once): a layer's index and inode entries are
    kept only until the last flat tree using it is checked, so memory follows the images
    in progress, not the repository.
    """
    checker = _Checker(root, _images(snapshot))
    present = {layer.digest for layer in snapshot.layers if layer.has_layerfs}
    flats = sorted(snapshot.flat_trees)
    pending = Counter(d for i in flats for d in set(checker.images.layers.get(i, ())))
    checked: set[str] = set()
    for image_id in flats:
        layers = checker.images.layers.get(image_id, ())
        for digest in present.intersection(layers) - checked:
            checker.layer(digest)
            checked.add(digest)
        checker.flat(image_id)
        for digest in set(layers):
            pending[digest] -= 1
            if not pending[digest]:
                checker.forget(digest)
    for digest in sorted(present - checked):  # no flat tree uses it
        checker.layer(digest)
        checker.forget(digest)
    return DeepReport(spec, tuple(checker.findings), len(present), len(flats))


def verify_content(publisher: Publisher, *, lock_timeout: float = 600.0) -> DeepReport:
    """``verify --deep``: hold the repository lock (no conversion changes it meanwhile)."""
    with publisher.locked(lock_timeout=lock_timeout):
        report = check_content(publisher.root, scan(publisher.root), publisher.spec)
    logger.info(
        "%s: %d layer(s) and %d flat tree(s) checked, %d problem(s)",
        publisher.spec,
        report.checked_layers,
        report.checked_flat_trees,
        len(report.problems),
    )
    return report


# --- repair ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeepRepair:
    before: DeepReport
    removed: tuple[PurePosixPath, ...]
    reconverted: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]
    """``(reference, error)`` of the images whose re-conversion failed."""
    after: DeepReport
    unreferenced: tuple[str, ...] = ()
    """Image ids of damaged flat trees no published image names (garbage collection's)."""


class Reconverter(Protocol):
    """How ``repair_content`` reaches the registry (the CLI builds one around a client)."""

    def check(self, status: ImageStatus) -> None:
        """Raise ``UnpackedError`` if the registry cannot serve the image now."""

    def convert(self, status: ImageStatus, name: str, with_flat: bool) -> None:
        """Convert the image again; ``name``: its ``.metadata`` path; ``with_flat``: it had
        a flat tree (else it was published with ``--skip-flat``)."""


def repair_content(
    publisher: Publisher, reconverter: Reconverter, *, lock_timeout: float = 600.0
) -> DeepRepair:
    """Remove the damaged layers and flat trees in one transaction, then convert the
    images that used them again (from the registry), and check again.

    Removing a layer makes every image listing it incomplete, so ``convert`` unpacks the
    layer anew for the first and reuses it for the others; a flat tree removed is built
    again. Nothing is removed unless the registry answers for every image to convert (a
    changed file is better than a dangling link). A damaged flat tree no published image
    names is left to garbage collection.
    """
    before = verify_content(publisher, lock_timeout=lock_timeout)
    snapshot = scan(publisher.root)
    flats, todo = _plan(before, snapshot)
    failed = [(name, reason) for name, reason in todo if isinstance(reason, str)]
    failed += _unreachable(reconverter, [s for _, s in todo if isinstance(s, ImageStatus)])
    removed: list[PurePosixPath] = []
    reconverted: list[str] = []
    if not failed:
        removed = [layout.layer_dir(Digest.parse(d)) for d in sorted(before.damaged_layers)]
        removed += [layout.flat_dir(Digest.parse(i)) for i in sorted(flats)]
        _remove(publisher, removed, lock_timeout)
        reconverted, failed = _convert_all(reconverter, todo, snapshot.flat_trees)
    after = verify_content(publisher, lock_timeout=lock_timeout)
    unreferenced = tuple(sorted(before.damaged_flat_trees - flats))
    return DeepRepair(
        before, tuple(removed), tuple(reconverted), tuple(failed), after, unreferenced
    )


def _plan(
    before: DeepReport, snapshot: Snapshot
) -> tuple[set[str], list[tuple[str, ImageStatus | str]]]:
    """The damaged flat trees some published image names, and the images to convert again
    (those and every image using a damaged layer), each with its status."""
    images = _images(snapshot)
    flats = {i for i in before.damaged_flat_trees if images.names.get(i)}
    affected = flats | {i for d in before.damaged_layers for i in images.users.get(d, ())}
    return flats, _statuses(snapshot, images.references(affected))


def _statuses(snapshot: Snapshot, names: Iterable[str]) -> list[tuple[str, ImageStatus | str]]:
    """Each name with its status, or why it has none usable."""
    statuses = {image.name: image.status for image in snapshot.images}
    return [
        (name, status)
        if isinstance(status := statuses[name], ImageStatus)
        else (name, "its status.json is unusable; run 'unpacked verify --repair' first")
        for name in names
    ]


def _unreachable(
    reconverter: Reconverter, statuses: Iterable[ImageStatus]
) -> list[tuple[str, str]]:
    failed = []
    for status in statuses:
        try:
            reconverter.check(status)
        except UnpackedError as exc:
            failed.append((status.reference, f"{exc} (nothing removed)"))
    return failed


def _remove(publisher: Publisher, paths: list[PurePosixPath], lock_timeout: float) -> None:
    if paths:
        with publisher.transaction(lock_timeout=lock_timeout) as tx:
            for path in paths:
                logger.info("repair: remove %s", path)
                tx.remove(path)


def _convert_all(
    reconverter: Reconverter,
    todo: list[tuple[str, ImageStatus | str]],
    flat_trees: frozenset[str],
) -> tuple[list[str], list[tuple[str, str]]]:
    reconverted, failed = [], []
    for name, status in todo:
        assert isinstance(status, ImageStatus)  # checked before anything was removed
        try:
            reconverter.convert(status, name, status.image_id in flat_trees)
        except UnpackedError as exc:  # reported per image; the others go on
            failed.append((status.reference, str(exc)))
        else:
            reconverted.append(status.reference)
    return reconverted, failed
