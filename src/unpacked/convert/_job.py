"""One image published inside one transaction: layers, flat tree, metadata, links."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from unpacked import layout
from unpacked.apptainer import prepare_sandbox
from unpacked.convert._blobs import AheadOfOrder, Downloads
from unpacked.convert._layer_records import (
    LayerWork,
    stored_layer,
    stored_layer_facts,
    touch_marker,
    update_schedule,
    write_catalog_markers,
    write_layer_records,
)
from unpacked.convert._model import (
    MAX_AUTO_UNPACK_WORKERS,
    ConvertOptions,
    ConvertResult,
    LayerProgress,
    Outcome,
    Placement,
    ProgressCallback,
    placement,
)
from unpacked.digest import Digest
from unpacked.errors import BlobAbandoned, LayerError, LowerLayersNeeded, UnpackWorkerDied
from unpacked.layers import (
    ApplyReport,
    LayerTree,
    SpareWorkers,
    Target,
    UnpackPool,
    available_cpus,
    complete_layer,
    merge_layers,
    unpack_layer,
)
from unpacked.publish import Capabilities, Transaction, WhiteoutForm
from unpacked.records import (
    ImageStatus,
)
from unpacked.reference import Reference
from unpacked.registry import RegistryClient, ResolvedImage

logger = logging.getLogger(__name__)

POOL_MIN_BYTES = 8 << 20
"""Below this many compressed bytes of new layers, starting workers costs more than it saves
(for the automatic choice; a number of workers asked for is used whatever the size)."""


def wanted_workers(options: ConvertOptions) -> int:
    """The workers asked for, or the automatic choice: one per CPU, at most
    ``MAX_AUTO_UNPACK_WORKERS``."""
    if options.unpack_workers is not None:
        return options.unpack_workers
    return min(MAX_AUTO_UNPACK_WORKERS, available_cpus())


@dataclass
class _Ready:
    """Layers ready to be merged onto ``tree`` (the flat tree, or a scratch one), in order;
    merged together, in one walk, when the tree must hold them."""

    tree: Path | None
    link: bool  # hard links into ``tree`` (else copies): see ``_links``
    layers: list[LayerTree] = field(default_factory=list)

    def merge(self) -> None:
        if self.tree is not None and self.layers:
            merge_layers(self.layers, self.tree, link=self.link)
        self.layers = []


def _links(capabilities: Capabilities, *, into_flat: bool) -> bool:
    """Whether layer files are hard-linked into the tree built below the new layers (else
    copied): a flat tree is published, a scratch tree needs scratch on the trees' file system."""
    if into_flat:
        return capabilities.hardlinks_across_directories
    return capabilities.scratch_on_tree_filesystem


@dataclass
class Job:
    """One image being published; lives for one transaction."""

    reference: Reference
    place: Placement
    image: ResolvedImage
    client: RegistryClient
    root: Path
    options: ConvertOptions
    progress: ProgressCallback | None
    spare: SpareWorkers | None = None
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
            write_layer_records(
                tx, self.image, work, when, index_content=self.options.content_index
            )
        if flat is not None:
            self._finish_flat(flat)
        self._write_metadata(tx, previous, when)

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

    def _plan(self, tx: Transaction) -> list[LayerWork]:
        diff_ids = self.image.config.diff_ids
        seen: set[Digest] = set()
        work = []
        for index, descriptor in enumerate(self.image.layers):
            new = (
                not self.options.skip_layers
                and descriptor.digest not in seen
                and not stored_layer(tx, descriptor.digest)
            )
            seen.add(descriptor.digest)
            work.append(LayerWork(index, descriptor, diff_ids[index], new))
        return work

    def _unpack_layers(self, tx: Transaction, work: list[LayerWork], flat: Path | None) -> None:
        new = [item for item in work if item.new]  # only a layer's first use is new
        for item in new:
            self._make_layer_dir(tx, item)
        tree = flat if flat is not None else self._scratch_tree(tx, work)
        link = _links(tx.capabilities, into_flat=flat is not None)
        workers = self._unpack_workers(new, work, tree)
        with contextlib.ExitStack() as stack:
            ahead = None
            if workers:
                try:
                    pool = stack.enter_context(UnpackPool(workers, self.spare))
                except LayerError as exc:
                    logger.warning("%s; unpacking the layers in this process", exc)
                else:
                    ahead = AheadOfOrder(self, tx, pool)
            blobs = stack.enter_context(self._downloads(tx, new, ahead))
            above = self._stack_layers(tx, work, blobs, ahead, _Ready(tree, link))
            if ahead is not None:
                ahead.close()  # the workers exit while the last layers merge
            if flat is not None and above:
                merge_layers(above, flat, link=link)

    @staticmethod
    def _scratch_tree(tx: Transaction, work: list[LayerWork]) -> Path | None:
        """A tree of the layers below the new ones, when no flat tree is being built.

        A new layer needs what is below it: the metadata of directories it creates only
        implicitly, the entries its opaque root hides, the targets of its hard links into
        lower layers. The stored layers are merged into this scratch tree (hard links,
        removed with the transaction) as they would be into a flat tree; copies where
        scratch lies on another file system than the layer trees (``_links``).
        """
        if not any(item.new and item.index > 0 for item in work):
            return None
        tree = tx.scratch_dir() / "lower-tree"
        os.mkdir(tree, 0o755)
        return tree

    def _unpack_workers(
        self, new: list[LayerWork], work: list[LayerWork], tree: Path | None
    ) -> int:
        """Worker processes for the new layers; 0: unpack them here, in order."""
        automatic = self.options.unpack_workers is None
        if automatic and sum(item.descriptor.size for item in new) < POOL_MIN_BYTES:
            return 0  # workers would not pay for their start
        wanted = wanted_workers(self.options)
        if wanted < 2:
            return 0
        # One new layer is worth a worker too when stored layers merge meanwhile.
        stored = tree is not None and len(new) < len(work)
        return min(wanted, len(new)) if len(new) > 1 or stored else 0

    def _downloads(
        self, tx: Transaction, items: list[LayerWork], ahead: AheadOfOrder | None
    ) -> Downloads:
        self.downloaded = sum(item.descriptor.size for item in items)
        return Downloads(self, tx, items, ahead.submit if ahead is not None else None)

    def _stack_layers(
        self,
        tx: Transaction,
        work: list[LayerWork],
        blobs: Downloads,
        ahead: AheadOfOrder | None,
        ready: _Ready,
    ) -> list[LayerTree]:
        """Unpack the new layers in order, each onto ``ready.tree`` holding the layers below it.

        Layers that are ready (stored, or unpacked) wait and are merged in one walk when
        a new layer needs them below it, or while the job waits for a worker; those above
        the last new layer are returned.
        """
        staged: dict[Digest, LayerWork] = {}
        for item in work:
            digest = item.descriptor.digest
            if digest in staged:  # the same layer twice in one image
                first = staged[digest]
                item.layerfs, item.whiteouts = first.layerfs, first.whiteouts
                item.diff_size = first.diff_size
            elif item.new:
                if ahead is None or not ahead.done(item):
                    ready.merge()  # needed below it, or merged while its worker works
                self._unpack_one(tx, item, blobs.wait(digest), ahead, ready)
                staged[digest] = item
            else:
                item.layerfs = tx.read_path(layout.layerfs_dir(digest))
                item.whiteouts, item.diff_size = stored_layer_facts(tx, item, self.layer_name(item))
                staged[digest] = item
                self.reused.append(digest)
            assert item.layerfs is not None
            ready.layers.append(LayerTree(item.layerfs, item.whiteouts, self.layer_name(item)))
        return ready.layers

    def _make_layer_dir(self, tx: Transaction, item: LayerWork) -> None:
        layer_root = tx.new_dir(layout.layer_dir(item.descriptor.digest))
        os.mkdir(layer_root / ".metadata", 0o755)
        item.layerfs = layer_root / "layerfs"
        self._make_layerfs(item.layerfs)

    @staticmethod
    def _make_layerfs(layerfs: Path) -> None:
        os.mkdir(layerfs, 0o755)
        # Before unpacking, so that the layer's own time for its root directory stays.
        touch_marker(layerfs)

    def _unpack_one(
        self,
        tx: Transaction,
        item: LayerWork,
        blob: Path,
        ahead: AheadOfOrder | None,
        ready: _Ready,
    ) -> None:
        report = None
        if ahead is not None:
            report = self._unpacked_ahead(tx, item, blob, ahead, ready)
        if report is None:
            ready.merge()
            report = self._unpack_here(item, blob, ready.tree, tx.capabilities.whiteouts)
        blob.unlink(missing_ok=True)  # not needed any more; keep it out of any flush
        tx.write_ahead()
        item.whiteouts = report.whiteouts
        item.diff_size = report.diff_size
        self.warnings.extend(f"{self.layer_name(item)}: {w}" for w in report.warnings)
        self.unpacked.append(item.descriptor.digest)
        self.report(item.descriptor.digest, "done", item.descriptor.size, item.descriptor.size)

    def _unpacked_ahead(
        self, tx: Transaction, item: LayerWork, blob: Path, ahead: AheadOfOrder, ready: _Ready
    ) -> ApplyReport | None:
        """The worker's layer, completed against the layers below it; None if it must be
        unpacked again."""
        assert item.layerfs is not None
        try:
            report = ahead.report(item, blob)
        except LowerLayersNeeded as exc:
            logger.info("%s: unpacking the layer again, after the layers below it", exc)
            self._restart_layerfs(tx, item)
            return None
        except BlobAbandoned as exc:
            logger.info("%s: unpacking the layer again, from the finished blob", exc)
            self._restart_layerfs(tx, item)
            return None
        except UnpackWorkerDied as exc:
            # Whatever killed it (the OOM killer, a limit), the layer can still be
            # unpacked here rather than fail the image.
            logger.warning("%s; unpacking the layer in this process instead", exc)
            self._restart_layerfs(tx, item)
            return None
        name = self.layer_name(item)
        if report.pending:  # most layers need nothing from below (docker lists parents)
            ready.merge()
        warnings = complete_layer(item.layerfs, ready.tree, report.pending, name=name)
        self.warnings.extend(f"{name}: {warning}" for warning in warnings)
        return report

    def _restart_layerfs(self, tx: Transaction, item: LayerWork) -> None:
        """An empty layer directory in place of a worker's partial one (discarded)."""
        assert item.layerfs is not None
        tx.discard(item.layerfs)
        self._make_layerfs(item.layerfs)

    def _unpack_here(
        self, item: LayerWork, blob: Path, tree: Path | None, whiteouts: WhiteoutForm
    ) -> ApplyReport:
        assert item.layerfs is not None
        self.report(item.descriptor.digest, "unpack", 0, item.descriptor.size)
        with open(blob, "rb") as stream:
            return unpack_layer(
                stream,
                item.descriptor.media_type,
                item.diff_id,
                item.layerfs,
                target=Target.LAYERFS,
                whiteouts=whiteouts,
                lower=tree,
                name=self.layer_name(item),
                bound=self.bound(item),
            )

    def _unpack_flat_only(self, tx: Transaction, work: list[LayerWork], flat: Path) -> None:
        # The same blob may appear twice in one image: delete it after its last use only.
        last_use = {item.descriptor.digest: item.index for item in work}
        first: dict[Digest, LayerWork] = {}
        for item in work:
            first.setdefault(item.descriptor.digest, item)
        with self._downloads(tx, list(first.values()), None) as blobs:
            for item in work:
                blob = blobs.wait(item.descriptor.digest)
                self._apply_flat(item, blob, flat)
                if last_use[item.descriptor.digest] == item.index:
                    blob.unlink()

    def _apply_flat(self, item: LayerWork, blob: Path, flat: Path) -> None:
        with open(blob, "rb") as stream:
            report = unpack_layer(
                stream,
                item.descriptor.media_type,
                item.diff_id,
                flat,
                target=Target.FLAT,
                name=self.layer_name(item),
                bound=self.bound(item),
            )
        self.warnings.extend(f"{self.layer_name(item)}: {w}" for w in report.warnings)

    def _finish_flat(self, flat: Path) -> None:
        report = prepare_sandbox(flat, self.image.config)
        self.warnings.extend(f"flat tree: {path}: {why}" for path, why in report.skipped)
        if not (flat / layout.CATALOG_MARKER).exists():
            touch_marker(flat)

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
        write_catalog_markers(tx, image, self.options)
        update_schedule(
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

    def layer_name(self, item: LayerWork) -> str:
        count = len(self.image.layers)
        return f"{item.descriptor.digest} ({item.index + 1}/{count} of {self.reference})"

    def bound(self, item: LayerWork) -> tuple[int, str]:
        """The most the layer may decompress to, and how that was set (for the error)."""
        limit, size = self.options.max_layer_size, item.descriptor.size
        return limit.for_blob(size), limit.describe(size)

    def report(self, digest: Digest, phase: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(LayerProgress(self.reference, digest, phase, done, total))
