"""Getting a conversion's new layers ready: blobs downloaded in parallel, and unpacked
by worker processes as they download, ahead of their turn (``AheadOfOrder``), or by
the job in order once downloaded."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from unpacked.convert._layer_records import LayerWork
from unpacked.digest import Digest
from unpacked.errors import BlobAbandoned
from unpacked.layers import ApplyReport, UnpackPool, abandon, discard, is_abandoned
from unpacked.publish import Transaction
from unpacked.registry import BlobStream

if TYPE_CHECKING:
    from unpacked.convert._job import Job

_CHUNK = 1 << 20

BlobHook = Callable[[LayerWork, Path], None]


class Downloads:
    """Blobs downloaded in parallel (a bounded pool of threads) to scratch files, verified.

    ``on_start`` runs in the download thread as soon as a blob's first file exists, so
    that it can be read as it grows (``GrowingBlob``). If that download restarts (into a
    new file) or fails, the file is abandoned (``abandon``): its reader stops, and removes
    it (``AheadOfOrder``), or the transaction's end does; a file nobody reads is removed
    at once. ``wait`` returns the finished, verified file.
    """

    def __init__(
        self, job: Job, tx: Transaction, items: list[LayerWork], on_start: BlobHook | None
    ) -> None:
        self._job = job
        self._scratch = tx.scratch_dir()
        self._on_start = on_start
        self._pool = ThreadPoolExecutor(
            max_workers=job.options.download_workers, thread_name_prefix="download"
        )
        self._futures: dict[Digest, Future[Path]] = {}
        for item in items:
            digest = item.descriptor.digest
            if digest not in self._futures:
                self._futures[digest] = self._pool.submit(self._fetch, item)

    def __enter__(self) -> Downloads:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # On failure, queued downloads are cancelled; running ones end with their stream.
        self._pool.shutdown(wait=True, cancel_futures=True)

    def wait(self, digest: Digest) -> Path:
        return self._futures[digest].result()

    def _fetch(self, item: LayerWork) -> Path:
        descriptor = item.descriptor
        job = self._job
        attempts: list[Path] = []

        def give_up(path: Path) -> None:
            if len(attempts) == 1 and self._on_start is not None:
                abandon(path)  # the reader may not even have opened it yet
            else:
                path.unlink(missing_ok=True)

        def consume(stream: BlobStream) -> Path:
            # Restartable: each attempt writes a file of its own, from the first byte; a
            # reader of an earlier one is told to stop.
            if attempts:
                give_up(attempts[-1])
            path = self._scratch / f"blob-{descriptor.digest.hex}-{len(attempts)}"
            attempts.append(path)
            with open(path, "wb") as out:
                if len(attempts) == 1 and self._on_start is not None:
                    self._on_start(item, path)
                done = 0
                while chunk := stream.read(_CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    job.report(descriptor.digest, "download", done, descriptor.size)
            return path

        try:
            return job.client.fetch_blob(job.reference, descriptor, consume)
        except BaseException:
            if attempts:
                give_up(attempts[-1])
            raise


class AheadOfOrder:
    """New layers handed to worker processes as soon as their download starts.

    Workers unpack with the lower layers deferred; the job then takes the reports in
    layer order (``report``) and completes each layer against the flat tree below it.
    """

    def __init__(self, job: Job, tx: Transaction, pool: UnpackPool) -> None:
        self._job = job
        self._tx = tx
        self._pool = pool
        self._futures: dict[Digest, Future[ApplyReport]] = {}
        self._followed: dict[Digest, Path] = {}

    def submit(self, item: LayerWork, blob: Path) -> None:
        """``Downloads``' hook, in a download thread: the blob is read as it downloads."""
        assert item.layerfs is not None
        digest = item.descriptor.digest
        self._followed[digest] = blob
        future = self._pool.submit(
            blob,
            item.descriptor.media_type,
            item.diff_id,
            item.layerfs,
            name=self._job.layer_name(item),
            size=item.descriptor.size,
            bound=self._job.bound(item),
        )
        future.add_done_callback(lambda done: self._unpacked(done, blob))
        self._futures[digest] = future

    def _unpacked(self, future: Future[ApplyReport], blob: Path) -> None:
        """Runs when a worker is done with a layer (in the pool's thread)."""
        if is_abandoned(blob) or (not future.cancelled() and future.exception() is None):
            # Kept for an unpacking in order otherwise; gone before it is flushed.
            discard(blob)
        # The layer's files may go to disk while the CPU works on the others.
        self._tx.write_ahead()

    def done(self, item: LayerWork) -> bool:
        """Whether the worker is done with the layer (its report would not block)."""
        future = self._futures.get(item.descriptor.digest)
        return future is not None and future.done()

    def close(self) -> None:
        """Every layer's report was taken: the workers may exit."""
        self._pool.close()

    def report(self, item: LayerWork, blob: Path) -> ApplyReport:
        """The worker's report (raises what the worker raised, e.g. ``LowerLayersNeeded``).

        Only after ``Downloads.wait`` returned the item's ``blob``, so it was submitted.
        A worker that read another file than that one (its download restarted) read
        bytes no digest vouched for: ``BlobAbandoned``, whatever it answered.
        """
        digest = item.descriptor.digest
        report = self._futures[digest].result()
        if self._followed[digest] != blob:
            raise BlobAbandoned(f"layer {self._job.layer_name(item)}: its download restarted")
        return report
