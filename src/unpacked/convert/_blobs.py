"""Getting a conversion's new layers ready: blobs downloaded in parallel, and unpacked
by worker processes as they download, ahead of their turn (``AheadOfOrder``), or by
the job in order once downloaded."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from unpacked.convert._model import LayerPlan
from unpacked.digest import Digest
from unpacked.errors import BlobAbandoned
from unpacked.layers import ApplyReport, UnpackPool, abandon, discard, is_abandoned
from unpacked.publish import WhiteoutForm
from unpacked.reference import Reference
from unpacked.registry import BlobStream, RegistryClient

_CHUNK = 1 << 20

BlobHook = Callable[[LayerPlan, Path], None]
LayerName = Callable[[LayerPlan], str]
Report = Callable[[Digest, str, int, int], None]
"""Progress of one layer: digest, phase, bytes done, bytes in all."""


class _Cancelled(Exception):
    """Another download failed for good: this one stops (``Downloads.wait`` raises that
    failure instead)."""


class Downloads:
    """Blobs downloaded in parallel (a bounded pool of threads) to scratch files, verified.

    ``on_start`` runs in the download thread as soon as a blob's first file exists, so
    that it can be read as it grows (``GrowingBlob``). If that download restarts (into a
    new file) or fails, the file is abandoned (``abandon``): its reader stops, and removes
    it (``AheadOfOrder``), or the transaction's end does; a file nobody reads is removed
    at once. ``wait`` returns the finished, verified file.

    Once one download has failed for good (or the job failed), the image cannot be
    published: the others stop at once, between two chunks or instead of their next
    retry, and those not started never start.
    """

    def __init__(
        self,
        client: RegistryClient,
        reference: Reference,
        items: Sequence[LayerPlan],
        *,
        scratch: Path,
        workers: int,
        name: LayerName,
        report: Report,
        on_start: BlobHook | None,
    ) -> None:
        self._client = client
        self._reference = reference
        self._scratch = scratch
        self._name = name
        self._report = report
        self._on_start = on_start
        self._failed = threading.Event()
        self._lock = threading.Lock()
        self._failure: BaseException | None = None
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="download")
        self._futures: dict[Digest, Future[Path]] = {}
        for item in items:
            digest = item.descriptor.digest
            if digest not in self._futures:
                self._futures[digest] = self._pool.submit(self._fetch, item)

    def __enter__(self) -> Downloads:
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        if exc_type is not None:
            self._failed.set()  # nothing downloaded now would be used
        # Queued downloads are cancelled; running ones end at their next chunk or retry.
        self._pool.shutdown(wait=True, cancel_futures=True)

    def wait(self, digest: Digest) -> Path:
        try:
            return self._futures[digest].result()
        except Exception as exc:
            with self._lock:
                failure = self._failure
            if failure is not None and failure is not exc:
                # Cancelled, or failed once cancelled: the failure that cancelled it counts.
                raise failure from None
            raise

    def _fetch(self, item: LayerPlan) -> Path:
        if self._failed.is_set():
            raise _Cancelled(f"layer {self._name(item)}: download cancelled")
        attempts: list[Path] = []
        consume = functools.partial(self._consume, item, attempts)
        try:
            return self._client.fetch_blob(self._reference, item.descriptor, consume, self._failed)
        except BaseException as exc:
            if attempts:
                self._give_up(attempts)
            with self._lock:
                if not self._failed.is_set():
                    self._failure = exc
                    self._failed.set()
            raise

    def _give_up(self, attempts: list[Path]) -> None:
        """The latest attempt's file will never be complete."""
        if len(attempts) == 1 and self._on_start is not None:
            abandon(attempts[0])  # its reader may not even have opened it yet
        else:
            attempts[-1].unlink(missing_ok=True)

    def _consume(self, item: LayerPlan, attempts: list[Path], stream: BlobStream) -> Path:
        # Restartable: each attempt writes a file of its own, from the first byte; a
        # reader of an earlier one is told to stop.
        descriptor = item.descriptor
        if attempts:
            self._give_up(attempts)
        path = self._scratch / f"blob-{descriptor.digest.hex}-{len(attempts)}"
        attempts.append(path)
        with open(path, "wb") as out:
            if len(attempts) == 1 and self._on_start is not None:
                self._on_start(item, path)
            done = 0
            while chunk := stream.read(_CHUNK):
                if self._failed.is_set():
                    raise _Cancelled(f"layer {self._name(item)}: download cancelled")
                out.write(chunk)
                done += len(chunk)
                self._report(descriptor.digest, "download", done, descriptor.size)
        return path


class AheadOfOrder:
    """New layers handed to worker processes as soon as their download starts.

    Workers unpack with the lower layers deferred; the job then takes the reports in
    layer order (``report``) and completes each layer against the flat tree below it.
    """

    def __init__(
        self,
        pool: UnpackPool,
        layerfs: Mapping[Digest, Path],
        *,
        name: LayerName,
        bound: Callable[[LayerPlan], tuple[int, str]],
        whiteouts: WhiteoutForm,
        write_ahead: Callable[[], None],
    ) -> None:
        self._pool = pool
        self._whiteouts = whiteouts
        self._layerfs = layerfs
        self._name = name
        self._bound = bound
        self._write_ahead = write_ahead
        self._futures: dict[Digest, Future[ApplyReport]] = {}
        self._followed: dict[Digest, Path] = {}

    def submit(self, item: LayerPlan, blob: Path) -> None:
        """``Downloads``' hook, in a download thread: the blob is read as it downloads."""
        digest = item.descriptor.digest
        self._followed[digest] = blob
        future = self._pool.submit(
            blob,
            item.descriptor.media_type,
            item.diff_id,
            self._layerfs[digest],
            whiteouts=self._whiteouts,
            name=self._name(item),
            size=item.descriptor.size,
            bound=self._bound(item),
        )
        future.add_done_callback(lambda done: self._unpacked(done, blob))
        self._futures[digest] = future

    def _unpacked(self, future: Future[ApplyReport], blob: Path) -> None:
        """Runs when a worker is done with a layer (in the pool's thread)."""
        if is_abandoned(blob) or (not future.cancelled() and future.exception() is None):
            # Kept for an unpacking in order otherwise; gone before it is flushed.
            discard(blob)
        # The layer's files may go to disk while the CPU works on the others.
        self._write_ahead()

    def done(self, item: LayerPlan) -> bool:
        """Whether the worker is done with the layer (its report would not block)."""
        future = self._futures.get(item.descriptor.digest)
        return future is not None and future.done()

    def close(self) -> None:
        """Every layer's report was taken: the workers may exit."""
        self._pool.close()

    def report(self, item: LayerPlan, blob: Path) -> ApplyReport:
        """The worker's report (raises what the worker raised, e.g. ``LowerLayersNeeded``).

        Only after ``Downloads.wait`` returned the item's ``blob``, so it was submitted.
        A worker that read another file than that one (its download restarted) read
        bytes no digest vouched for: ``BlobAbandoned``, whatever it answered.
        """
        digest = item.descriptor.digest
        report = self._futures[digest].result()
        if self._followed[digest] != blob:
            raise BlobAbandoned(f"layer {self._name(item)}: its download restarted")
        return report
