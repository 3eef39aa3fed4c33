"""A blob as it downloads: a readable stream that verifies digest and size as it goes."""

from __future__ import annotations

from collections.abc import Iterator

import httpx

from unpacked.digest import VerifyingReader
from unpacked.errors import VerificationError
from unpacked.manifest import Descriptor

from ._errors import Subject, Transient, transport_error

CHUNK_SIZE = 1 << 16


class _ChunkReader:
    """``read(size)`` over an iterator of byte chunks, never returning more than ``limit``
    bytes in total (so that a server sending too much cannot fill our memory).

    Small reads from a large chunk copy only what they return (tar readers ask
    for 512 bytes at a time; re-slicing the rest of the chunk each time would
    make a layer's download quadratic in the chunk size).
    """

    def __init__(self, chunks: Iterator[bytes], limit: int) -> None:
        self._chunks = chunks
        self._chunk = b""
        self._offset = 0
        self._left = limit

    def read(self, size: int = -1, /) -> bytes:
        want = self._left if size < 0 else min(size, self._left)
        parts: list[bytes] = []
        have = 0
        while have < want:
            if self._offset >= len(self._chunk):
                self._chunk, self._offset = next(self._chunks, b""), 0
                if not self._chunk:
                    break
            piece = self._chunk[self._offset : self._offset + want - have]
            self._offset += len(piece)
            parts.append(piece)
            have += len(piece)
        self._left -= have
        return parts[0] if len(parts) == 1 else b"".join(parts)


class BlobStream:
    """The bytes of one blob, read from the registry while ``consume`` runs.

    ``read`` is the binary file-object ``read``. The content is checked against
    the descriptor's digest and size as it passes: reading to the end raises
    ``VerificationError`` on a mismatch, and a stream longer than announced fails
    as soon as the excess arrives. Bytes handed out before the end are not yet
    verified: whatever ``consume`` builds from them must stay provisional until
    ``fetch_blob`` returns (by then the rest has been read and checked).

    A dropped connection raises ``RegistryConnectionError``; the client then
    starts the whole fetch again with a fresh stream.
    """

    def __init__(self, chunks: Iterator[bytes], descriptor: Descriptor, subject: Subject) -> None:
        self.descriptor = descriptor
        self._subject = subject
        self._reader = VerifyingReader(
            _ChunkReader(chunks, descriptor.size + 1),
            descriptor.digest,
            descriptor.size,
            what=f"{subject.what} in registry {subject.registry}",
        )
        self.transport_failure: Transient | None = None
        self.verification_failure: VerificationError | None = None

    @property
    def bytes_read(self) -> int:
        return self._reader.bytes_read

    @property
    def verified(self) -> bool:
        """True once the whole blob was read and matched its digest and size."""
        return self._reader.verified

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._reader.read(size)
        except httpx.HTTPError as exc:
            failure = transport_error(exc, self._subject)
            if isinstance(failure, Transient):
                # Remembered so that the fetch is retried even if ``consume``
                # wraps this error in one of its own.
                failure.__cause__ = exc
                self.transport_failure = failure
                raise failure.error from exc
            raise failure from exc
        except VerificationError as exc:
            self.verification_failure = exc
            raise

    def drain(self) -> None:
        """Read and verify whatever ``consume`` left unread."""
        while self.read(CHUNK_SIZE):
            pass

    def settle(self, error: BaseException) -> None:
        """After ``consume`` raised ``error``: re-raise what the stream itself saw, if anything.

        A verification failure wins over whatever ``consume`` made of it; a
        dropped connection becomes ``Transient`` so that the fetch starts again.
        """
        if self.verification_failure is not None:
            if error is not self.verification_failure:
                raise self.verification_failure from error
            return
        if self.transport_failure is not None:
            raise self.transport_failure
