"""The scheduling of one image's layers inside its transaction: new layers downloaded and
unpacked (ahead of order by workers, or here in order), each stacked onto the tree below
it (the flat tree, or a scratch one); one immutable result per layer position."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from unpacked import layout
from unpacked.convert._blobs import AheadOfOrder, Downloads
from unpacked.convert._context import ImageContext
from unpacked.convert._layer_records import stored_layer, stored_layer_facts, touch_marker
from unpacked.convert._model import (
    MAX_AUTO_UNPACK_WORKERS,
    ConvertOptions,
    LayerPlan,
    LayerResult,
    Stacked,
)
from unpacked.digest import Digest
from unpacked.errors import BlobAbandoned, LayerError, LowerLayersNeeded, UnpackWorkerDied
from unpacked.events import EventCallback, LayerProgress, emit
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
from unpacked.registry import RegistryClient

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


class LayerStack:
    """The scheduling of one image's layers inside its transaction: downloads, workers,
    the order layers are merged in. Produces one immutable ``LayerResult`` per position."""

    def __init__(
        self,
        context: ImageContext,
        tx: Transaction,
        client: RegistryClient,
        on_event: EventCallback | None,
        spare: SpareWorkers | None = None,
    ) -> None:
        self._context = context
        self._options = context.options
        self._tx = tx
        self._client = client
        self._on_event = on_event
        self._spare = spare
        self._warnings: list[str] = []

    def plan(self, layer_trees: bool) -> list[LayerPlan]:
        """The image's layer positions; with ``layer_trees``, those to unpack are new."""
        diff_ids = self._context.image.config.diff_ids
        seen: set[Digest] = set()
        work = []
        for index, descriptor in enumerate(self._context.image.layers):
            new = (
                layer_trees
                and descriptor.digest not in seen
                and not stored_layer(self._tx, descriptor.digest)
            )
            seen.add(descriptor.digest)
            work.append(LayerPlan(index, descriptor, diff_ids[index], new))
        return work

    def into_layer_dirs(self, work: list[LayerPlan], flat: Path | None) -> Stacked:
        """Each new layer unpacked into its layer directory, the layers merged onto
        ``flat`` (if a flat tree is being built)."""
        new = [item for item in work if item.new]  # only a layer's first use is new
        layerfs = {item.descriptor.digest: self._make_layer_dir(item) for item in new}
        tree = flat if flat is not None else self._scratch_tree(work)
        link = _links(self._tx.capabilities, into_flat=flat is not None)
        workers = self._unpack_workers(new, work, tree)
        with contextlib.ExitStack() as stack:
            ahead = None
            if workers:
                try:
                    pool = stack.enter_context(UnpackPool(workers, self._spare))
                except LayerError as exc:
                    logger.warning("%s; unpacking the layers in this process", exc)
                else:
                    ahead = self._ahead(pool, layerfs)
            blobs = stack.enter_context(self._downloads(new, ahead))
            ready = _Ready(tree, link)
            results, above = self._stack_layers(work, layerfs, blobs, ahead, ready)
            if ahead is not None:
                ahead.close()  # the workers exit while the last layers merge
            if flat is not None and above:
                merge_layers(above, flat, link=link)
        return Stacked(tuple(results), tuple(self._warnings), _size(new))

    def _ahead(self, pool: UnpackPool, layerfs: dict[Digest, Path]) -> AheadOfOrder:
        context = self._context
        return AheadOfOrder(
            pool,
            layerfs,
            name=context.layer_name,
            bound=context.bound,
            whiteouts=self._tx.capabilities.whiteouts,
            write_ahead=self._tx.write_ahead,
        )

    def _scratch_tree(self, work: list[LayerPlan]) -> Path | None:
        """A tree of the layers below the new ones, when no flat tree is being built.

        A new layer needs what is below it: the metadata of directories it creates only
        implicitly, the entries its opaque root hides, the targets of its hard links into
        lower layers. The stored layers are merged into this scratch tree (hard links,
        removed with the transaction) as they would be into a flat tree; copies where
        scratch lies on another file system than the layer trees (``_links``).
        """
        if not any(item.new and item.index > 0 for item in work):
            return None
        tree = self._tx.scratch_dir() / "lower-tree"
        os.mkdir(tree, 0o755)
        return tree

    def _unpack_workers(
        self, new: list[LayerPlan], work: list[LayerPlan], tree: Path | None
    ) -> int:
        """Worker processes for the new layers; 0: unpack them here, in order."""
        automatic = self._options.unpack_workers is None
        if automatic and _size(new) < POOL_MIN_BYTES:
            return 0  # workers would not pay for their start
        wanted = wanted_workers(self._options)
        if wanted < 2:
            return 0
        # One new layer is worth a worker too when stored layers merge meanwhile.
        stored = tree is not None and len(new) < len(work)
        return min(wanted, len(new)) if len(new) > 1 or stored else 0

    def _downloads(self, items: list[LayerPlan], ahead: AheadOfOrder | None) -> Downloads:
        return Downloads(
            self._client,
            self._context.reference,
            items,
            scratch=self._tx.scratch_dir(),
            workers=self._options.download_workers,
            name=self._context.layer_name,
            report=self._report,
            on_start=ahead.submit if ahead is not None else None,
        )

    def _stack_layers(
        self,
        work: list[LayerPlan],
        layerfs: dict[Digest, Path],
        blobs: Downloads,
        ahead: AheadOfOrder | None,
        ready: _Ready,
    ) -> tuple[list[LayerResult], list[LayerTree]]:
        """Unpack the new layers in order, each onto ``ready.tree`` holding the layers below it.

        Layers that are ready (stored, or unpacked) wait and are merged in one walk when
        a new layer needs them below it, or while the job waits for a worker; those above
        the last new layer are returned, with every position's result.
        """
        results: list[LayerResult] = []
        staged: dict[Digest, LayerResult] = {}
        for item in work:
            digest = item.descriptor.digest
            if digest in staged:  # the same layer twice in one image
                result = replace(staged[digest], plan=item)
            elif item.new:
                if ahead is None or not ahead.done(item):
                    ready.merge()  # needed below it, or merged while its worker works
                result = self._unpack_one(item, layerfs[digest], blobs.wait(digest), ahead, ready)
            else:
                result = self._stored(item)
            staged.setdefault(digest, result)
            results.append(result)
            name = self._context.layer_name(item)
            ready.layers.append(LayerTree(result.tree, result.whiteouts, name))
        return results, ready.layers

    def _stored(self, item: LayerPlan) -> LayerResult:
        digest = item.descriptor.digest
        tree = self._tx.read_path(layout.layerfs_dir(digest))
        name = self._context.layer_name(item)
        whiteouts, diff_size = stored_layer_facts(self._tx, digest, name)
        return LayerResult(item, tree, whiteouts, diff_size, reused=True)

    def _make_layer_dir(self, item: LayerPlan) -> Path:
        layer_root = self._tx.new_dir(layout.layer_dir(item.descriptor.digest))
        os.mkdir(layer_root / layout.LAYER_METADATA, 0o755)
        layerfs = layer_root / layout.LAYERFS
        self._make_layerfs(layerfs)
        return layerfs

    @staticmethod
    def _make_layerfs(layerfs: Path) -> None:
        os.mkdir(layerfs, 0o755)
        # Before unpacking, so that the layer's own time for its root directory stays.
        touch_marker(layerfs)

    def _unpack_one(
        self,
        item: LayerPlan,
        layerfs: Path,
        blob: Path,
        ahead: AheadOfOrder | None,
        ready: _Ready,
    ) -> LayerResult:
        report = None
        if ahead is not None:
            report = self._unpacked_ahead(item, layerfs, blob, ahead, ready)
        if report is None:
            ready.merge()
            report = self._unpack_here(
                item, layerfs, blob, ready.tree, self._tx.capabilities.whiteouts
            )
        blob.unlink(missing_ok=True)  # not needed any more; keep it out of any flush
        self._tx.write_ahead()
        name = self._context.layer_name(item)
        self._warnings.extend(f"{name}: {w}" for w in report.warnings)
        self._report(item.descriptor.digest, "done", item.descriptor.size, item.descriptor.size)
        return LayerResult(item, layerfs, report.whiteouts, report.diff_size, reused=False)

    def _unpacked_ahead(
        self, item: LayerPlan, layerfs: Path, blob: Path, ahead: AheadOfOrder, ready: _Ready
    ) -> ApplyReport | None:
        """The worker's layer, completed against the layers below it; None if it must be
        unpacked again."""
        try:
            report = ahead.report(item, blob)
        except LowerLayersNeeded as exc:
            logger.info("%s: unpacking the layer again, after the layers below it", exc)
            self._restart_layerfs(layerfs)
            return None
        except BlobAbandoned as exc:
            logger.info("%s: unpacking the layer again, from the finished blob", exc)
            self._restart_layerfs(layerfs)
            return None
        except UnpackWorkerDied as exc:
            # Whatever killed it (the OOM killer, a limit), the layer can still be
            # unpacked here rather than fail the image.
            logger.warning("%s; unpacking the layer in this process instead", exc)
            self._restart_layerfs(layerfs)
            return None
        name = self._context.layer_name(item)
        if report.pending:  # most layers need nothing from below (docker lists parents)
            ready.merge()
        warnings = complete_layer(layerfs, ready.tree, report.pending, name=name)
        self._warnings.extend(f"{name}: {warning}" for warning in warnings)
        return report

    def _restart_layerfs(self, layerfs: Path) -> None:
        """An empty layer directory in place of a worker's partial one (discarded)."""
        self._tx.discard(layerfs)
        self._make_layerfs(layerfs)

    def _unpack_here(
        self,
        item: LayerPlan,
        layerfs: Path,
        blob: Path,
        tree: Path | None,
        whiteouts: WhiteoutForm,
    ) -> ApplyReport:
        self._report(item.descriptor.digest, "unpack", 0, item.descriptor.size)
        with open(blob, "rb") as stream:
            return unpack_layer(
                stream,
                item.descriptor.media_type,
                item.diff_id,
                layerfs,
                target=Target.LAYERFS,
                whiteouts=whiteouts,
                lower=tree,
                name=self._context.layer_name(item),
                bound=self._context.bound(item),
            )

    def onto_flat(self, work: list[LayerPlan], flat: Path) -> Stacked:
        """Every layer applied straight onto the flat tree (no layer directories)."""
        # The same blob may appear twice in one image: delete it after its last use only.
        last_use = {item.descriptor.digest: item.index for item in work}
        first: dict[Digest, LayerPlan] = {}
        for item in work:
            first.setdefault(item.descriptor.digest, item)
        with self._downloads(list(first.values()), None) as blobs:
            for item in work:
                blob = blobs.wait(item.descriptor.digest)
                self._apply_flat(item, blob, flat)
                if last_use[item.descriptor.digest] == item.index:
                    blob.unlink()
        return Stacked((), tuple(self._warnings), _size(first.values()))

    def _apply_flat(self, item: LayerPlan, blob: Path, flat: Path) -> None:
        name = self._context.layer_name(item)
        with open(blob, "rb") as stream:
            report = unpack_layer(
                stream,
                item.descriptor.media_type,
                item.diff_id,
                flat,
                target=Target.FLAT,
                name=name,
                bound=self._context.bound(item),
            )
        self._warnings.extend(f"{name}: {w}" for w in report.warnings)

    def _report(self, digest: Digest, phase: str, done: int, total: int) -> None:
        if self._on_event is not None:  # once per downloaded chunk: nothing made for nobody
            emit(self._on_event, LayerProgress(self._context.reference, digest, phase, done, total))


def _size(items: Iterable[LayerPlan]) -> int:
    """The compressed bytes of ``items`` (what downloading them costs)."""
    return sum(item.descriptor.size for item in items)
