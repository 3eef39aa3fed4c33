"""check: pure, from a ``Snapshot`` to the findings, each with the fix ``--repair`` records."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from unpacked import layout
from unpacked.digest import Digest
from unpacked.errors import UnpackedError
from unpacked.manifest import Manifest
from unpacked.records import ImageStatus, RemovalSchedule, origin_json
from unpacked.reference import parse as parse_reference
from unpacked.verify._model import (
    HEX64,
    Broken,
    Finding,
    ImageEntry,
    Kind,
    LayerEntry,
    LinkEntry,
    Remedy,
    Remove,
    Schedule,
    SetLink,
    Snapshot,
    VerifyOptions,
    WriteFile,
)


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
    return f"sha256:{c}" if HEX64.fullmatch(c) and c.startswith(c2) else None


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
            directory / layout.MANIFEST_NAME,
            f"{image.name}: manifest.json {image.manifest.reason}",
            Remedy.RECONVERT,
            refs,
        )
    status_problem = _status_problem(image)
    if status_problem is not None or isinstance(image.status, Broken):
        yield Finding(
            Kind.STATUS_INVALID,
            directory / layout.STATUS_NAME,
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
        path = layout.METADATA / image.name / layout.MANIFEST_NAME
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
