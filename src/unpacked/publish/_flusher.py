"""Writing staged data to disk in the background, so that the commit's flush waits less.

A conversion writes hundreds of megabytes into the page cache while its CPU work
goes on; the commit then makes it all durable with one syncfs(2). Starting that
writeback early, in a thread of its own, overlaps the disk with the CPU. It is an
optimisation only: durability comes from the commit's own flush, and an error
here is left for that flush to report.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from unpacked.publish._fs import sync_filesystem

logger = logging.getLogger(__name__)


class Flusher:
    """One background thread running syncfs on ``path``'s file system when asked.

    Requests made while a flush runs are coalesced into one more flush. ``close``
    waits for the thread.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._wanted = threading.Condition()
        self._pending = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def request(self) -> None:
        """Flush soon (thread-safe; cheap if a flush is already pending)."""
        with self._wanted:
            if self._closed:
                return
            self._pending = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="flush", daemon=True)
                self._thread.start()
            self._wanted.notify()

    def close(self) -> None:
        with self._wanted:
            self._closed = True
            self._wanted.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._wanted:
                while not self._pending and not self._closed:
                    self._wanted.wait()
                if self._closed:
                    return
                self._pending = False
            try:
                sync_filesystem(self._path)
            except OSError as error:
                logger.debug("background flush of %s failed: %s", self._path, error)
