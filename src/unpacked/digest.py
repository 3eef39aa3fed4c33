"""Content digests (``algorithm:hex``) and streams that verify them as they are read."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Protocol

from unpacked.errors import VerificationError

_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_DIGEST_RE = re.compile(r"^(?P<algorithm>[a-z0-9]+(?:[+._-][a-z0-9]+)*):(?P<hex>[a-zA-Z0-9=_-]+)$")


class Readable(Protocol):
    """The part of a binary file object that a stream reader needs."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True, order=True)
class Digest:
    """A validated content digest; only algorithms we can verify are accepted."""

    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``sha256:<64 hex>`` (or sha512); raise ``ValueError`` naming the problem."""
        match = _DIGEST_RE.match(text)
        if match is None:
            raise ValueError(f"malformed digest {text!r}")
        algorithm, hexpart = match["algorithm"], match["hex"]
        expected = _HEX_LENGTH.get(algorithm)
        if expected is None:
            raise ValueError(f"unsupported digest algorithm {algorithm!r} in {text!r}")
        if len(hexpart) != expected or not re.fullmatch(r"[0-9a-f]+", hexpart):
            raise ValueError(f"digest {text!r}: expected {expected} lowercase hex characters")
        return cls(algorithm, hexpart)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        """The digest of ``data``."""
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> hashlib._Hash:
        """A fresh hash object of this digest's algorithm."""
        return hashlib.new(self.algorithm)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


class VerifyingReader:
    """Wrap a stream; hash what passes through and check digest and size at the end.

    The check happens when the underlying stream reports end of file, so a
    consumer that reads to the end gets a ``VerificationError`` instead of
    silently accepting wrong bytes. ``what`` names the content in messages
    ("blob sha256:... of registry/repo"). A stream longer than ``size`` fails
    as soon as the excess arrives, so a hostile server cannot make us read
    without bound.
    """

    def __init__(
        self, stream: Readable, digest: Digest, size: int | None = None, *, what: str = "content"
    ) -> None:
        self._stream = stream
        self._digest = digest
        self._size = size
        self._what = what
        self._hash = digest.hasher()
        self._count = 0
        self._verified = False

    @property
    def bytes_read(self) -> int:
        return self._count

    @property
    def verified(self) -> bool:
        """True once the whole stream was read and matched."""
        return self._verified

    def read(self, size: int = -1, /) -> bytes:
        chunk = self._stream.read(size)
        if chunk:
            self._count += len(chunk)
            if self._size is not None and self._count > self._size:
                raise VerificationError(f"{self._what}: more than the announced {self._size} bytes")
            self._hash.update(chunk)
        elif size != 0 and not self._verified:
            self._finish()
        return chunk

    def drain(self, chunk_size: int = 1 << 20) -> None:
        """Read (and verify) whatever is left of the stream."""
        while self.read(chunk_size):
            pass

    def _finish(self) -> None:
        if self._size is not None and self._count != self._size:
            raise VerificationError(f"{self._what}: got {self._count} bytes, expected {self._size}")
        actual = f"{self._digest.algorithm}:{self._hash.hexdigest()}"
        if actual != str(self._digest):
            raise VerificationError(
                f"{self._what}: digest mismatch, got {actual}, expected {self._digest}"
            )
        self._verified = True
