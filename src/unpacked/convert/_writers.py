"""What a conversion writes, one writer per output: layer directories, the flat tree, the
metadata and links. ``writers_for`` is the one place that turns the options (the wish
list's keys, the CLI's flags) into the list of writers; a new output is a new class and one
line there."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Protocol

from unpacked import layout
from unpacked.apptainer import prepare_sandbox
from unpacked.convert._context import ImageContext
from unpacked.convert._layer_records import (
    flat_catalog_dirs,
    layer_catalog_dirs,
    touch_marker,
    update_schedule,
    write_catalog_markers,
    write_layer_records,
)
from unpacked.convert._model import ConvertOptions, Stacked, placement
from unpacked.publish import Transaction
from unpacked.records import ImageStatus


class Writer(Protocol):
    """One output of a conversion, written inside the image's transaction.

    ``begin`` runs before any layer is unpacked, ``finish`` once every layer is ready, in
    the order of ``writers_for``.
    """

    name: str
    layer_trees: bool
    """Whether it needs every new layer unpacked into a layer directory of its own."""

    def begin(self, tx: Transaction, context: ImageContext) -> Path | None:
        """The tree the image's layers are to be merged onto, if this writer builds one."""
        ...

    def finish(self, tx: Transaction, context: ImageContext, stacked: Stacked) -> list[str]:
        """Write the output; its warnings."""
        ...


def writers_for(options: ConvertOptions) -> list[Writer]:
    """The writers of a conversion with ``options``, in the order they run."""
    writers: list[Writer] = []
    if not options.skip_layers:
        writers.append(LayerDirs())
    if not options.skip_flat:
        writers.append(FlatTree())
    writers.append(Metadata())
    return writers


class LayerDirs:
    """``.layers/<l2>/<l>/``: each new layer's ``layerfs``, the records of every layer."""

    name = "layers"
    layer_trees = True

    def begin(self, tx: Transaction, context: ImageContext) -> Path | None:
        return None  # the layer scheduling makes the directories of the new layers

    def finish(self, tx: Transaction, context: ImageContext, stacked: Stacked) -> list[str]:
        index_content = context.options.content_index
        write_layer_records(
            tx, context.image, stacked.layers, context.when, index_content=index_content
        )
        write_catalog_markers(tx, layer_catalog_dirs(context.image))
        return []


class FlatTree:
    """``.flat/<c2>/<c>``: the image's layers merged, plus the Apptainer files (built once
    per image id: an existing one is kept)."""

    name = "flat"
    layer_trees = False

    def __init__(self) -> None:
        self._tree: Path | None = None

    def begin(self, tx: Transaction, context: ImageContext) -> Path | None:
        flat_rel = layout.flat_dir(context.image.image_id)
        if not tx.exists(flat_rel):
            self._tree = tx.new_dir(flat_rel)
        return self._tree

    def finish(self, tx: Transaction, context: ImageContext, stacked: Stacked) -> list[str]:
        warnings = []
        if self._tree is not None:
            report = prepare_sandbox(self._tree, context.image.config)
            warnings = [f"flat tree: {path}: {why}" for path, why in report.skipped]
            if not (self._tree / layout.CATALOG_MARKER).exists():
                touch_marker(self._tree)
        write_catalog_markers(tx, flat_catalog_dirs(context.image))
        return warnings


class Metadata:
    """``manifest.json`` and ``status.json``, the removal schedule, the public and
    ``.multiarch`` links (swapped last)."""

    name = "metadata"
    layer_trees = False

    def begin(self, tx: Transaction, context: ImageContext) -> Path | None:
        return None

    def finish(self, tx: Transaction, context: ImageContext, stacked: Stacked) -> list[str]:
        image, place = context.image, context.place
        status = ImageStatus(
            reference=str(context.reference),
            digest=str(image.top.digest),
            media_type=image.top.media_type,
            manifest_digest=str(image.manifest_descriptor.digest),
            image_id=str(image.image_id),
            platform=str(image.platform),
            last_check=context.when,
            last_change=context.when,
        )
        tx.write_file(place.manifest_file, image.manifest_raw)
        tx.write_file(place.status_file, status.to_bytes())
        update_schedule(
            tx,
            context.root,
            reference=context.reference,
            previous=context.previous,
            image_id=str(image.image_id),
            when=context.when,
        )
        self._links(tx, context)
        return []

    @staticmethod
    def _links(tx: Transaction, context: ImageContext) -> None:
        place = context.place
        for link in place.links:
            target = layout.relative_target(link, layout.flat_dir(context.image.image_id))
            tx.set_symlink(link, str(target))
        if context.options.skip_flat:
            # Layers only: a link left from an earlier full conversion would show an image
            # that status.json no longer describes.
            full = placement(context.reference, replace(context.options, skip_flat=False))
            for link in full.links:
                if tx.exists(link):
                    tx.remove(link)
        for alias, name in place.aliases:
            if not tx.exists(alias):
                tx.set_symlink(alias, name)
