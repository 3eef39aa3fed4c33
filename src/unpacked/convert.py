"""The conversion pipeline: one image reference in, one published image (or an error) out.

    HEAD manifest ─▶ unchanged? ─yes─▶ status.json: last check ─▶ done (no blob requests)
        │no
    manifest (index → platform) + config
        │
    one transaction:
        download missing layers (in parallel, verified, to scratch files)
        ─▶ each new layer unpacked once into .layers/<l2>/<l>/layerfs
        ─▶ flat tree composed from the layer directories with hard links, plus the
           Apptainer files ─▶ .flat/<c2>/<c>
        ─▶ origin.json / layers.json of every layer, manifest.json, status.json
        ─▶ public link swapped last

Anything that fails inside the transaction leaves the repository as it was.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from unpacked import layout
from unpacked.apptainer import prepare_sandbox
from unpacked.digest import Digest
from unpacked.errors import ConfigError, PublishError, UnpackedError
from unpacked.layers import Target, unpack_layer
from unpacked.layers._merge import merge_layer
from unpacked.manifest import Descriptor, parse_manifest
from unpacked.platform import DEFAULT, Platform
from unpacked.publish import Publisher, Transaction
from unpacked.records import (
    ImageStatus,
    LayerRecord,
    RemovalSchedule,
    merge_layer_records,
    origin_json,
    parse_layer_records,
    parse_origin,
    storage_layer_ids,
)
from unpacked.reference import Reference
from unpacked.registry import BlobStream, RegistryClient, ResolvedImage
from unpacked.status import list_statuses, read_status

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


class Outcome(enum.Enum):
    ADDED = "added"
    UPDATED = "updated"
    UNCHANGED = "unchanged"


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
    lock_timeout: float = 600.0


@dataclass(frozen=True)
class Placement:
    """Where one image's metadata and links go in the repository layout."""

    metadata: PurePosixPath
    links: tuple[PurePosixPath, ...]
    aliases: tuple[tuple[PurePosixPath, str], ...] = ()
    """``.multiarch/<uname -m name>`` links to their OCI-named directory."""

    @property
    def status_file(self) -> PurePosixPath:
        return self.metadata / "status.json"

    @property
    def manifest_file(self) -> PurePosixPath:
        return self.metadata / "manifest.json"


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
class LayerProgress:
    """A progress event: ``phase`` is "download", "unpack" or "done"."""

    reference: Reference
    digest: Digest
    phase: str
    done: int
    total: int


ProgressCallback = Callable[[LayerProgress], None]


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
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def convert_image(
    reference: Reference,
    *,
    client: RegistryClient,
    publisher: Publisher,
    options: ConvertOptions = ConvertOptions(),
    progress: ProgressCallback | None = None,
    now: Callable[[], str] = utc_now,
) -> ConvertResult:
    """Publish ``reference`` into ``publisher``'s repository, or find it up to date."""
    _check_options(reference, options)
    started = time.monotonic()
    place = placement(reference, options)
    head = client.head_manifest(reference)
    previous = read_status(publisher.root, reference, place.status_file)
    if previous is not None and _is_current(publisher.root, place, head, previous, options):
        if options.record_check:
            record_checks(publisher, [(reference, options)], now(), options.lock_timeout)
        logger.info("%s: unchanged (%s)", reference, head.digest)
        return ConvertResult(
            reference,
            Outcome.UNCHANGED,
            head.digest,
            Digest.parse(previous.image_id),
            Platform.parse(previous.platform),
            place.links[0] if place.links else None,
            seconds=time.monotonic() - started,
        )
    resolved = client.resolve_image(reference, options.platform)
    job = _Job(reference, place, resolved, client, publisher.root, options, progress)
    with publisher.transaction(lock_timeout=options.lock_timeout) as tx:
        job.publish(tx, previous, now())
    outcome = Outcome.ADDED if previous is None else Outcome.UPDATED
    logger.info("%s: %s as %s", reference, outcome.value, resolved.image_id)
    return job.result(outcome, time.monotonic() - started)


def _check_options(reference: Reference, options: ConvertOptions) -> None:
    if reference.is_wildcard:
        raise ConfigError(f"{reference}: a wildcard reference must be expanded before converting")
    if options.skip_flat and options.skip_layers:
        raise ConfigError(f"{reference}: --skip-flat and --skip-layers leave nothing to publish")
    if options.download_workers < 1:
        raise ConfigError("download workers must be at least 1")


def _is_current(
    root: Path,
    place: Placement,
    head: Descriptor,
    status: ImageStatus,
    options: ConvertOptions,
) -> bool:
    """Whether the published image is the one the registry serves now, and complete."""
    if status.digest != str(head.digest):
        return False
    if not options.platform.matches(Platform.parse(status.platform)):
        return False
    flat = layout.flat_dir(Digest.parse(status.image_id))
    if place.links and not (root / flat).is_dir():
        return False
    if not all(_link_points_to(root, link, flat) for link in place.links):
        return False
    if not _metadata_consistent(root, place, status):
        return False
    return options.skip_layers or _layers_present(root, place)


def _link_points_to(root: Path, link: PurePosixPath, flat: PurePosixPath) -> bool:
    try:
        return os.readlink(root / link) == str(layout.relative_target(link, flat))
    except OSError:
        return False


def _metadata_consistent(root: Path, place: Placement, status: ImageStatus) -> bool:
    """manifest.json is the manifest status.json names, of the image it names."""
    try:
        raw = (root / place.manifest_file).read_bytes()
        manifest = parse_manifest(raw)
    except (OSError, UnpackedError):
        return False
    return (
        str(Digest.of(raw)) == status.manifest_digest
        and str(manifest.config.digest) == status.image_id
    )


def _layers_present(root: Path, place: Placement) -> bool:
    try:
        manifest = parse_manifest((root / place.manifest_file).read_bytes())
    except (OSError, UnpackedError):
        return False
    return all((root / layout.layerfs_dir(layer.digest)).is_dir() for layer in manifest.layers)


def record_checks(
    publisher: Publisher,
    checked: Sequence[tuple[Reference, ConvertOptions]],
    when: str,
    lock_timeout: float = 600.0,
) -> None:
    """Set lastCheck (and clear lastError) of these unchanged images, in one transaction.

    One transaction for a whole batch: on CVMFS every transaction is a publish, and a
    no-op run should not cost one per image.
    """
    updates = []
    for reference, options in checked:
        status_file = placement(reference, options).status_file
        status = read_status(publisher.root, reference, status_file)
        if status is not None:
            fields = {**status.__dict__, "last_check": when, "last_error": None}
            updates.append((status_file, ImageStatus(**fields).to_bytes()))
    if not updates:
        return
    with publisher.transaction(lock_timeout=lock_timeout) as tx:
        for status_file, data in updates:
            tx.write_file(status_file, data)


def record_failure(
    publisher: Publisher,
    reference: Reference,
    error: BaseException,
    options: ConvertOptions = ConvertOptions(),
    when: str | None = None,
) -> None:
    """Note ``error`` in the status of an image that was published before.

    Never raises: a failure to record a failure is logged, and the original error is
    what the caller reports.
    """
    status_file = placement(reference, options).status_file
    status = read_status(publisher.root, reference, status_file)
    if status is None:
        return
    when = when or utc_now()
    updated = ImageStatus(**{**status.__dict__, "last_check": when, "last_error": str(error)})
    try:
        with publisher.transaction(lock_timeout=60) as tx:
            tx.write_file(status_file, updated.to_bytes())
    except UnpackedError as exc:
        logger.warning("%s: could not record the failure in status.json: %s", reference, exc)


@dataclass
class _LayerWork:
    """One layer of the image being published."""

    index: int
    descriptor: Descriptor
    diff_id: Digest
    new: bool
    layerfs: Path | None = None
    whiteouts: str = "overlay"
    diff_size: int = 0


@dataclass
class _Job:
    """One image being published; lives for one transaction."""

    reference: Reference
    place: Placement
    image: ResolvedImage
    client: RegistryClient
    root: Path
    options: ConvertOptions
    progress: ProgressCallback | None
    unpacked: list[Digest] = field(default_factory=list)
    reused: list[Digest] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    downloaded: int = 0

    def publish(self, tx: Transaction, previous: ImageStatus | None, when: str) -> None:
        flat_rel = layout.flat_dir(self.image.image_id)
        build_flat = not self.options.skip_flat and not tx.exists(flat_rel)
        flat = tx.new_dir(flat_rel) if build_flat else None
        work = self._plan(tx)
        if self.options.skip_layers:
            if flat is not None:
                self._unpack_flat_only(tx, work, flat)
        else:
            self._unpack_layers(tx, work, flat)
            _write_layer_records(tx, self.image, work, when)
        if flat is not None:
            self._finish_flat(flat)
        self._write_metadata(tx, previous, when)

    def _downloads(self, tx: Transaction, items: list[_LayerWork]) -> _Downloads:
        self.downloaded = sum({i.descriptor.digest: i.descriptor.size for i in items}.values())
        return _Downloads(self, tx, items)

    def result(self, outcome: Outcome, seconds: float) -> ConvertResult:
        return ConvertResult(
            self.reference,
            outcome,
            self.image.top.digest,
            self.image.image_id,
            self.image.platform,
            self.place.links[0] if self.place.links else None,
            tuple(self.unpacked),
            tuple(self.reused),
            self.downloaded,
            tuple(self.warnings),
            seconds,
        )

    def _plan(self, tx: Transaction) -> list[_LayerWork]:
        diff_ids = self.image.config.diff_ids
        seen: set[Digest] = set()
        work = []
        for index, descriptor in enumerate(self.image.layers):
            new = (
                not self.options.skip_layers
                and descriptor.digest not in seen
                and not _stored_layer(tx, descriptor.digest)
            )
            seen.add(descriptor.digest)
            work.append(_LayerWork(index, descriptor, diff_ids[index], new))
        return work

    def _unpack_layers(self, tx: Transaction, work: list[_LayerWork], flat: Path | None) -> None:
        with self._downloads(tx, [item for item in work if item.new]) as blobs:
            self._stack_layers(tx, work, blobs, flat)

    def _stack_layers(
        self, tx: Transaction, work: list[_LayerWork], blobs: _Downloads, flat: Path | None
    ) -> None:
        staged: dict[Digest, _LayerWork] = {}
        for item in work:
            digest = item.descriptor.digest
            if item.new:
                self._unpack_one(tx, item, blobs.wait(digest), flat)
                staged[digest] = item
            elif digest in staged:  # the same layer twice in one image
                first = staged[digest]
                item.layerfs, item.whiteouts = first.layerfs, first.whiteouts
                item.diff_size = first.diff_size
            else:
                item.layerfs = tx.read_path(layout.layerfs_dir(digest))
                item.whiteouts, item.diff_size = _stored_layer_facts(
                    tx, item, self._layer_name(item)
                )
                staged[digest] = item
                self.reused.append(digest)
            if flat is not None:
                assert item.layerfs is not None
                merge_layer(
                    item.layerfs, flat, whiteouts=item.whiteouts, name=self._layer_name(item)
                )

    def _unpack_one(self, tx: Transaction, item: _LayerWork, blob: Path, flat: Path | None) -> None:
        digest = item.descriptor.digest
        layer_root = tx.new_dir(layout.layer_dir(digest))
        item.layerfs = layer_root / "layerfs"
        os.mkdir(item.layerfs, 0o755)
        os.mkdir(layer_root / ".metadata", 0o755)
        # Before unpacking, so that the layer's own time for its root directory stays.
        _touch_marker(item.layerfs)
        self._report(digest, "unpack", 0, item.descriptor.size)
        with open(blob, "rb") as stream:
            report = unpack_layer(
                stream,
                item.descriptor.media_type,
                item.diff_id,
                item.layerfs,
                target=Target.LAYERFS,
                lower=flat,
                name=self._layer_name(item),
            )
        blob.unlink()  # not needed any more; keep it out of the commit's flush
        item.whiteouts = report.whiteouts
        item.diff_size = report.diff_size
        self.warnings.extend(f"{self._layer_name(item)}: {w}" for w in report.warnings)
        self.unpacked.append(digest)
        self._report(digest, "done", item.descriptor.size, item.descriptor.size)

    def _unpack_flat_only(self, tx: Transaction, work: list[_LayerWork], flat: Path) -> None:
        # The same blob may appear twice in one image: delete it after its last use only.
        last_use = {item.descriptor.digest: item.index for item in work}
        with self._downloads(tx, work) as blobs:
            for item in work:
                blob = blobs.wait(item.descriptor.digest)
                self._apply_flat(item, blob, flat)
                if last_use[item.descriptor.digest] == item.index:
                    blob.unlink()

    def _apply_flat(self, item: _LayerWork, blob: Path, flat: Path) -> None:
        with open(blob, "rb") as stream:
            report = unpack_layer(
                stream,
                item.descriptor.media_type,
                item.diff_id,
                flat,
                target=Target.FLAT,
                name=self._layer_name(item),
            )
        self.warnings.extend(f"{self._layer_name(item)}: {w}" for w in report.warnings)

    def _finish_flat(self, flat: Path) -> None:
        report = prepare_sandbox(flat, self.image.config)
        self.warnings.extend(f"flat tree: {path}: {why}" for path, why in report.skipped)
        if not (flat / layout.CATALOG_MARKER).exists():
            _touch_marker(flat)

    def _write_metadata(self, tx: Transaction, previous: ImageStatus | None, when: str) -> None:
        image = self.image
        status = ImageStatus(
            reference=str(self.reference),
            digest=str(image.top.digest),
            media_type=image.top.media_type,
            manifest_digest=str(image.manifest_descriptor.digest),
            image_id=str(image.image_id),
            platform=str(image.platform),
            last_check=when,
            last_change=when,
        )
        tx.write_file(self.place.manifest_file, image.manifest_raw)
        tx.write_file(self.place.status_file, status.to_bytes())
        _write_catalog_markers(tx, image, self.options)
        _update_schedule(
            tx,
            self.root,
            reference=self.reference,
            previous=previous,
            image_id=str(image.image_id),
            when=when,
        )
        for link in self.place.links:
            target = layout.relative_target(link, layout.flat_dir(image.image_id))
            tx.set_symlink(link, str(target))
        if self.options.skip_flat:
            # Layers only: a link left from an earlier full conversion would show an image
            # that status.json no longer describes.
            full = placement(self.reference, replace(self.options, skip_flat=False))
            for link in full.links:
                if tx.exists(link):
                    tx.remove(link)
        for alias, name in self.place.aliases:
            if not tx.exists(alias):
                tx.set_symlink(alias, name)

    def _layer_name(self, item: _LayerWork) -> str:
        count = len(self.image.layers)
        return f"{item.descriptor.digest} ({item.index + 1}/{count} of {self.reference})"

    def _report(self, digest: Digest, phase: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(LayerProgress(self.reference, digest, phase, done, total))


def _stored_layer(tx: Transaction, digest: Digest) -> bool:
    """Whether the repository holds the layer; an incomplete layer directory is an error."""
    if not tx.exists(layout.layer_dir(digest)):
        return False
    if not tx.exists(layout.layerfs_dir(digest)):
        raise PublishError(
            f"layer {digest}: {layout.layer_dir(digest)} exists without its layerfs; "
            "run 'unpacked verify --repair' to remove it, then convert again"
        )
    return True


def _touch_marker(directory: Path) -> None:
    """An empty ``.cvmfscatalog`` (0644 whatever the umask, like every published file)."""
    marker = directory / layout.CATALOG_MARKER
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        os.fchmod(fd, 0o644)
    finally:
        os.close(fd)


def _stored_layer_facts(tx: Transaction, item: _LayerWork, name: str) -> tuple[str, int]:
    """Whiteout form and diff size of a layer the repository holds, from its layers.json."""
    path = tx.read_path(layout.layer_record_file(item.descriptor.digest))
    try:
        records = parse_layer_records(path.read_bytes(), what=str(path))
        sizes = {int(record["diff-size"]) for record in records}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PublishError(f"layer {name}: stored layer record unusable: {exc}") from exc
    modes = {record.get("unpacked-whiteouts", "overlay") for record in records}
    return ("wh-files" if "wh-files" in modes else "overlay"), max(sizes, default=0)


def _write_layer_records(
    tx: Transaction, image: ResolvedImage, work: list[_LayerWork], when: str
) -> None:
    """origin.json (this image added) and layers.json (this image's layer ids) of each layer.

    A layer may stand at several positions of one image (empty layers do): its records
    are collected first and each file is written once.
    """
    ids = storage_layer_ids(image.config.diff_ids)
    records: dict[Digest, list[LayerRecord]] = {}
    first: dict[Digest, _LayerWork] = {}
    for item in work:
        digest = item.descriptor.digest
        first.setdefault(digest, item)
        records.setdefault(digest, []).append(
            LayerRecord(
                ids[item.index],
                when,
                str(digest),
                str(item.diff_id),
                item.diff_size,
                item.whiteouts,
            )
        )
    image_id = str(image.image_id)
    for digest, item in first.items():
        if item.new:
            assert item.layerfs is not None
            metadata = item.layerfs.parent / ".metadata"
            (metadata / "origin.json").write_bytes(origin_json([image_id]))
            (metadata / "layers.json").write_bytes(
                merge_layer_records([], records[digest]) or b"[]"
            )
        else:
            _update_layer_metadata(tx, digest, records[digest], image_id)


def _update_layer_metadata(
    tx: Transaction, digest: Digest, records: list[LayerRecord], image_id: str
) -> None:
    try:
        _merge_layer_metadata(tx, digest, records, image_id)
    except ValueError as exc:  # a malformed origin.json or layers.json
        raise PublishError(
            f"layer {digest}: {exc}; run 'unpacked verify --repair', then convert again"
        ) from exc


def _merge_layer_metadata(
    tx: Transaction, digest: Digest, records: list[LayerRecord], image_id: str
) -> None:
    origin_path = layout.layer_origin_file(digest)
    origins = parse_origin(_read_optional(tx.read_path(origin_path)), what=str(origin_path))
    if image_id not in origins:
        tx.write_file(origin_path, origin_json(origins | {image_id}))
    records_path = layout.layer_record_file(digest)
    existing = parse_layer_records(
        _read_optional(tx.read_path(records_path)), what=str(records_path)
    )
    updated = merge_layer_records(existing, records)
    if updated is not None:
        tx.write_file(records_path, updated)


def _read_optional(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _update_schedule(
    tx: Transaction,
    root: Path,
    *,
    reference: Reference,
    previous: ImageStatus | None,
    image_id: str,
    when: str,
) -> None:
    """Schedule the image this reference leaves, if nothing else uses it; unschedule ours.

    The replaced flat tree stays (jobs may still be running in it) until garbage
    collection removes it after the grace period.
    """
    path = tx.read_path(layout.REMOVE_SCHEDULE)
    try:
        schedule = RemovalSchedule.from_bytes(_read_optional(path))
    except ValueError as exc:
        raise PublishError(f"{path}: {exc}") from exc
    updated = schedule.without([image_id])
    if previous is not None and previous.image_id != image_id:
        users = {
            status.image_id for status in list_statuses(root) if status.reference != str(reference)
        }
        if previous.image_id not in users:
            updated = updated.add(previous.image_id, str(reference), when)
    if updated != schedule:
        tx.write_file(layout.REMOVE_SCHEDULE, updated.to_bytes())


def _write_catalog_markers(tx: Transaction, image: ResolvedImage, options: ConvertOptions) -> None:
    """The top-level and super-directory ``.cvmfscatalog`` markers (DESIGN.md section 8).

    Only for the trees this conversion writes: a marker in an otherwise empty directory
    would make an empty nested catalog.
    """
    dirs: set[PurePosixPath] = set()
    if not options.skip_flat:
        dirs |= {layout.FLAT, layout.flat_dir(image.image_id).parent}
    if not options.skip_layers:
        dirs |= {layout.LAYERS}
        dirs |= {layout.layer_dir(layer.digest).parent for layer in image.layers}
    for directory in sorted(dirs):
        marker = directory / layout.CATALOG_MARKER
        if not tx.exists(marker):
            tx.write_file(marker, b"")


class _Downloads:
    """Blobs downloaded in parallel (a bounded pool) to scratch files, verified."""

    def __init__(self, job: _Job, tx: Transaction, items: list[_LayerWork]) -> None:
        self._job = job
        self._scratch = tx.scratch_dir()
        self._pool = ThreadPoolExecutor(
            max_workers=job.options.download_workers, thread_name_prefix="download"
        )
        self._futures: dict[Digest, Future[Path]] = {}
        for item in items:
            digest = item.descriptor.digest
            if digest not in self._futures:
                self._futures[digest] = self._pool.submit(self._fetch, item.descriptor)

    def __enter__(self) -> _Downloads:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # On failure, queued downloads are cancelled; running ones end with their stream.
        self._pool.shutdown(wait=True, cancel_futures=True)

    def wait(self, digest: Digest) -> Path:
        return self._futures[digest].result()

    def _fetch(self, descriptor: Descriptor) -> Path:
        path = self._scratch / f"blob-{descriptor.digest.hex}"
        job = self._job

        def consume(stream: BlobStream) -> Path:
            # Restartable: a retried fetch truncates and writes from the first byte.
            with open(path, "wb") as out:
                done = 0
                while chunk := stream.read(_CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    job._report(descriptor.digest, "download", done, descriptor.size)
            return path

        return job.client.fetch_blob(job.reference, descriptor, consume)
