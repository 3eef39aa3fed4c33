"""The fast header decoder gives exactly what ``tarfile`` gives, for any block."""

from __future__ import annotations

import tarfile

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from unpacked.layers._header import fields
from unpacked.layers._tarstream import _StrictTarInfo

ATTRIBUTES = (
    "name", "linkname", "uname", "gname", "mode", "uid", "gid", "size", "mtime",
    "chksum", "type", "devmajor", "devminor",
)  # fmt: skip


def _decode(cls: type[tarfile.TarInfo], buf: bytes) -> tuple[object, ...]:
    try:
        info = cls.frombuf(buf, "utf-8", "surrogateescape")
    except tarfile.HeaderError as exc:
        return ("error", type(exc).__name__)
    sparse = getattr(info, "_sparse_structs", None)
    return (*(getattr(info, a) for a in ATTRIBUTES), sparse)


names = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=120)


@st.composite
def header_blocks(draw: st.DrawFn) -> bytes:
    info = tarfile.TarInfo(draw(names))
    info.type = draw(st.sampled_from([*tarfile.SUPPORTED_TYPES, b"V", b"Z"]))
    info.mode = draw(st.integers(0, 0o7777))
    info.uid = draw(st.integers(0, 2**21 - 1) | st.integers(0, 2**40))
    info.gid = draw(st.integers(0, 2**21 - 1))
    info.size = draw(st.integers(0, 2**33) if info.type in tarfile.REGULAR_TYPES else st.just(0))
    info.mtime = draw(st.integers(0, 2**33 - 1))
    info.linkname = draw(st.just("") | names)
    info.uname = draw(st.text(st.characters(codec="ascii", exclude_characters="\0"), max_size=31))
    info.devmajor = draw(st.integers(0, 4095))
    info.devminor = draw(st.integers(0, 4095))
    fmt = draw(st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT]))
    try:
        block = info.tobuf(format=fmt, encoding="utf-8", errors="surrogateescape")
    except ValueError:
        block = bytes(512)
    # The last header block is the member's own (earlier ones: GNU long names).
    buf = bytearray(block[-512:] if len(block) % 512 == 0 else block[:512])
    for position, value in draw(st.lists(st.tuples(st.integers(0, 511), st.integers(0, 255)))):
        buf[position] = value  # damage: bad checksums, odd digits, base-256, NULs
    return bytes(buf)


@settings(max_examples=3000, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(header_blocks())
@example(bytes(512))
@example(b"")
@example(bytes(100))
def test_same_as_tarfile(buf: bytes) -> None:
    assert _decode(_StrictTarInfo, buf) == _decode(tarfile.TarInfo, buf)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT])
def test_ordinary_headers_take_the_fast_path(fmt: int) -> None:
    info = tarfile.TarInfo("usr/share/doc/README")
    info.size, info.mode, info.uid, info.mtime = 1234, 0o644, 1000, 1_700_000_000
    found = fields(info.tobuf(format=fmt))
    assert found is not None
    assert found.strings[0] == b"usr/share/doc/README"
    assert found.numbers[:5] == (0o644, 1000, 0, 1234, 1_700_000_000)


def test_unusual_headers_go_to_tarfile() -> None:
    info = tarfile.TarInfo("big")
    info.size = 2**40  # base-256 in GNU format
    assert fields(info.tobuf(format=tarfile.GNU_FORMAT)) is None
    assert fields(bytes(512)) is None
