"""How much one layer may decompress to: a bound against decompression bombs.

A 10 MB gzip of 10 GiB of zeros would otherwise fill the repository before anything
failed. The bound is counted on the decompressed stream as it is read (``Bounded``),
so nothing past it is ever written.
"""

from __future__ import annotations

from dataclasses import dataclass

from unpacked.digest import Readable
from unpacked.errors import LayerTooLargeError

GiB = 1 << 30


@dataclass(frozen=True)
class SizeLimit:
    """The most a layer may decompress to: ``fixed`` bytes, or else ``factor`` times its
    compressed size, at least ``floor`` and at most ``cap``."""

    fixed: int | None = None
    factor: int = 100
    floor: int = 1 * GiB
    cap: int = 64 * GiB

    def for_blob(self, compressed: int) -> int:
        if self.fixed is not None:
            return self.fixed
        return max(self.floor, min(self.cap, self.factor * compressed))

    def describe(self, compressed: int) -> str:
        limit = self.for_blob(compressed)
        if self.fixed is not None:
            return f"{limit} bytes (--max-layer-size)"
        return (
            f"{limit} bytes ({self.factor}x its compressed size, at least {self.floor}, "
            f"at most {self.cap}; see --max-layer-size)"
        )


class Bounded:
    """A decompressed stream that raises ``LayerTooLargeError`` past ``limit`` bytes."""

    def __init__(self, stream: Readable, limit: int, *, name: str, why: str) -> None:
        self._stream = stream
        self._left = limit
        self._name = name
        self._why = why

    def read(self, size: int = -1, /) -> bytes:
        data = self._stream.read(size)
        self._left -= len(data)
        if self._left < 0:
            raise LayerTooLargeError(
                f"layer {self._name}: decompresses to more than the limit of {self._why}"
            )
        return data
