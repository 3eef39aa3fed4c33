"""A blob file that is still being downloaded, read as it grows.

A layer can then be unpacked from its first bytes on, in a worker process, while the
download thread writes the rest. The writer and the reader agree on two things only:
the file's final size (the descriptor's), and a marker beside the file (``abandon``)
when the writer gives up on it, because its fetch restarted into another file or
failed. The reader never takes a short read for the end of the blob.

An abandoned file stays until its reader is done with it (``discard``): the reader
may not even have opened it yet (a worker busy with another layer, a loaded CPU).
"""

from __future__ import annotations

import time
from pathlib import Path

from unpacked.errors import BlobAbandoned

ABANDONED_SUFFIX = ".abandoned"
_POLL_SECONDS = 0.002


def abandoned_marker(path: Path) -> Path:
    return path.with_name(path.name + ABANDONED_SUFFIX)


def abandon(path: Path) -> None:
    """``path`` will never be complete: tell its reader (who removes it, ``discard``)."""
    abandoned_marker(path).touch()


def is_abandoned(path: Path) -> bool:
    return abandoned_marker(path).exists()


def discard(path: Path) -> None:
    """Remove a blob file and its marker, once nobody reads it any more."""
    path.unlink(missing_ok=True)
    abandoned_marker(path).unlink(missing_ok=True)


class GrowingBlob:
    """The first ``size`` bytes of ``path``, waiting for those not written yet.

    Raises ``BlobAbandoned`` (naming ``name``) once the writer abandoned the file.
    """

    def __init__(self, path: Path, size: int, *, name: str) -> None:
        self._marker = abandoned_marker(path)
        self._name = name
        self._left = size
        try:
            # Unbuffered: a read at the current end must not be remembered as the end.
            self._file = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by close()
        except FileNotFoundError as exc:
            if self._marker.exists():
                raise BlobAbandoned(f"layer {name}: its download restarted or failed") from exc
            raise

    def __enter__(self) -> GrowingBlob:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._file.close()

    def read(self, size: int = -1, /) -> bytes:
        if self._left == 0:
            return b""
        wanted = self._left if size < 0 else min(size, self._left)
        while True:
            data = self._file.read(wanted)
            if data:
                self._left -= len(data)
                return data
            if self._marker.exists():
                raise BlobAbandoned(f"layer {self._name}: its download restarted or failed")
            time.sleep(_POLL_SECONDS)
