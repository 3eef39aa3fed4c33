"""One image published inside one transaction: layers, flat tree, metadata, links."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from unpacked import layout
from unpacked.apptainer import prepare_sandbox
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
    ConvertOptions,
    ConvertResult,
    LayerProgress,
    Outcome,
    Placement,
    ProgressCallback,
    placement,
)
from unpacked.digest import Digest
from unpacked.layers import Target, merge_layer, unpack_layer
from unpacked.manifest import Descriptor
from unpacked.publish import Transaction
from unpacked.records import (
    ImageStatus,
)
from unpacked.reference import Reference
from unpacked.registry import BlobStream, RegistryClient, ResolvedImage

_CHUNK = 1 << 20


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
            write_layer_records(tx, self.image, work, when)
        if flat is not None:
            self._finish_flat(flat)
        self._write_metadata(tx, previous, when)

    def _downloads(self, tx: Transaction, items: list[LayerWork]) -> Downloads:
        self.downloaded = sum({i.descriptor.digest: i.descriptor.size for i in items}.values())
        return Downloads(self, tx, items)

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
        with self._downloads(tx, [item for item in work if item.new]) as blobs:
            self._stack_layers(tx, work, blobs, flat)

    def _stack_layers(
        self, tx: Transaction, work: list[LayerWork], blobs: Downloads, flat: Path | None
    ) -> None:
        staged: dict[Digest, LayerWork] = {}
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
                item.whiteouts, item.diff_size = stored_layer_facts(
                    tx, item, self._layer_name(item)
                )
                staged[digest] = item
                self.reused.append(digest)
            if flat is not None:
                assert item.layerfs is not None
                merge_layer(
                    item.layerfs, flat, whiteouts=item.whiteouts, name=self._layer_name(item)
                )

    def _unpack_one(self, tx: Transaction, item: LayerWork, blob: Path, flat: Path | None) -> None:
        digest = item.descriptor.digest
        layer_root = tx.new_dir(layout.layer_dir(digest))
        item.layerfs = layer_root / "layerfs"
        os.mkdir(item.layerfs, 0o755)
        os.mkdir(layer_root / ".metadata", 0o755)
        # Before unpacking, so that the layer's own time for its root directory stays.
        touch_marker(item.layerfs)
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

    def _unpack_flat_only(self, tx: Transaction, work: list[LayerWork], flat: Path) -> None:
        # The same blob may appear twice in one image: delete it after its last use only.
        last_use = {item.descriptor.digest: item.index for item in work}
        with self._downloads(tx, work) as blobs:
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
                name=self._layer_name(item),
            )
        self.warnings.extend(f"{self._layer_name(item)}: {w}" for w in report.warnings)

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

    def _layer_name(self, item: LayerWork) -> str:
        count = len(self.image.layers)
        return f"{item.descriptor.digest} ({item.index + 1}/{count} of {self.reference})"

    def _report(self, digest: Digest, phase: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(LayerProgress(self.reference, digest, phase, done, total))


class Downloads:
    """Blobs downloaded in parallel (a bounded pool) to scratch files, verified."""

    def __init__(self, job: Job, tx: Transaction, items: list[LayerWork]) -> None:
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

    def __enter__(self) -> Downloads:
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
