"""``GrowingBlob``: a blob file read while another thread still writes it."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from unpacked.errors import BlobAbandoned
from unpacked.layers import GrowingBlob, abandon, discard, is_abandoned

DATA = os.urandom(300_000)


def _write_slowly(path: Path, data: bytes, *, stop_at: int | None = None) -> threading.Thread:
    """Write ``data`` to ``path`` in uneven chunks with pauses; abandon it at ``stop_at``."""

    def run() -> None:
        with open(path, "ab") as out:
            done = 0
            for size in [1, 511, 4096, 70_000] * 100:
                if stop_at is not None and done >= stop_at:
                    abandon(path)
                    return
                chunk = data[done : done + size]
                if not chunk:
                    return
                out.write(chunk)
                out.flush()
                done += len(chunk)
                time.sleep(0.003)

    writer = threading.Thread(target=run)
    writer.start()
    return writer


@pytest.mark.parametrize("read_size", [-1, 1, 1000, 65_536])
def test_reads_every_byte_as_it_arrives_and_nothing_more(tmp_path: Path, read_size: int) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"")
    writer = _write_slowly(path, DATA + b"beyond the size")
    got = bytearray()
    with GrowingBlob(path, len(DATA), name="L") as blob:
        while chunk := blob.read(read_size):
            got += chunk
        assert blob.read() == b""
    writer.join(30)
    assert bytes(got) == DATA  # no short read taken for the end, nothing past the size


def test_an_abandoned_blob_stops_its_reader(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"")
    writer = _write_slowly(path, DATA, stop_at=100_000)
    got = bytearray()
    with (
        GrowingBlob(path, len(DATA), name="sha256:abc (1/2 of r)") as blob,
        pytest.raises(BlobAbandoned, match=r"sha256:abc \(1/2 of r\)"),
    ):
        while chunk := blob.read(8192):
            got += chunk
    writer.join(30)
    assert 100_000 <= len(got) < len(DATA)
    assert path.exists(), "an abandoned file stays until its reader is done with it"
    discard(path)
    assert not path.exists() and not is_abandoned(path)


def test_a_blob_abandoned_and_removed_before_it_was_opened(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    abandon(path)
    with pytest.raises(BlobAbandoned, match="restarted or failed"):
        GrowingBlob(path, 10, name="L")
