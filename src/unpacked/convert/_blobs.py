"""Getting a conversion's new layers ready: blobs downloaded in parallel, then unpacked
by worker processes ahead of their turn (``AheadOfOrder``) or by the job in order."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from unpacked.convert._layer_records import LayerWork
from unpacked.digest import Digest
from unpacked.layers import ApplyReport, UnpackPool
from unpacked.publish import Transaction
from unpacked.registry import BlobStream

if TYPE_CHECKING:
    from unpacked.convert._job import Job

_CHUNK = 1 << 20

BlobHook = Callable[[LayerWork, Path], None]


class Downloads:
    """Blobs downloaded in parallel (a bounded pool of threads) to scratch files, verified.

    ``on_blob`` runs in the download thread once a blob is complete, before ``wait``
    returns it.
    """

    def __init__(
        self, job: Job, tx: Transaction, items: list[LayerWork], on_blob: BlobHook | None
    ) -> None:
        self._job = job
        self._scratch = tx.scratch_dir()
        self._on_blob = on_blob
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
        path = self._scratch / f"blob-{descriptor.digest.hex}"
        job = self._job

        def consume(stream: BlobStream) -> Path:
            # Restartable: a retried fetch truncates and writes from the first byte.
            with open(path, "wb") as out:
                done = 0
                while chunk := stream.read(_CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    job.report(descriptor.digest, "download", done, descriptor.size)
            return path

        blob = job.client.fetch_blob(job.reference, descriptor, consume)
        if self._on_blob is not None:
            self._on_blob(item, blob)
        return blob


class AheadOfOrder:
    """New layers handed to worker processes as soon as their blob is on disk.

    Workers unpack with the lower layers deferred; the job then takes the reports in
    layer order (``report``) and completes each layer against the flat tree below it.
    """

    def __init__(self, job: Job, tx: Transaction, pool: UnpackPool) -> None:
        self._job = job
        self._tx = tx
        self._pool = pool
        self._futures: dict[Digest, Future[ApplyReport]] = {}

    def submit(self, item: LayerWork, blob: Path) -> None:
        """``Downloads``' hook: runs in a download thread."""
        assert item.layerfs is not None
        digest = item.descriptor.digest
        self._job.report(digest, "unpack", 0, item.descriptor.size)
        future = self._pool.submit(
            blob,
            item.descriptor.media_type,
            item.diff_id,
            item.layerfs,
            name=self._job.layer_name(item),
        )
        future.add_done_callback(lambda done: self._unpacked(done, blob))
        self._futures[digest] = future

    def _unpacked(self, future: Future[ApplyReport], blob: Path) -> None:
        """Runs when a worker is done with a layer (in the pool's thread)."""
        if not future.cancelled() and future.exception() is None:
            # Kept for an unpacking in order otherwise; gone before it is flushed.
            blob.unlink(missing_ok=True)
        # The layer's files may go to disk while the CPU works on the others.
        self._tx.write_ahead()

    def done(self, item: LayerWork) -> bool:
        """Whether the worker is done with the layer (its report would not block)."""
        future = self._futures.get(item.descriptor.digest)
        return future is not None and future.done()

    def close(self) -> None:
        """Every layer's report was taken: the workers may exit."""
        self._pool.close()

    def report(self, item: LayerWork) -> ApplyReport:
        """The worker's report (raises what the worker raised, e.g. ``LowerLayersNeeded``).

        Only after ``Downloads.wait`` returned the item's blob, so it was submitted.
        """
        return self._futures[item.descriptor.digest].result()
