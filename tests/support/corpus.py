"""The awkward test images: every case a layer applier must get right, a few images apart.

Each ``CorpusImage`` is a short list of uncompressed layer tars with one
compression per layer, small enough to build in milliseconds. They are split
by theme ("basic", "whiteouts", "links", ...) so a failure points at the case.
Layer order and entry order inside a layer are part of each case.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .oci import BuiltImage, TarEntry, build_image, tar_bytes

T = TarEntry

NON_UTF8 = b"latin1-caf\xe9"
LONG_COMPONENT = "c" * 255
"""The longest file name Linux accepts."""

CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
"""``security.capability`` (VFS_CAP_REVISION_2, effective) granting CAP_NET_RAW, as ping has."""


@dataclass(frozen=True)
class CorpusImage:
    """A named test image: its layers (uncompressed tars) and each layer's compression."""

    name: str
    layers: tuple[bytes, ...]
    compressions: tuple[str, ...]

    def build(self, layout: Path, *, tag: str | None = None) -> BuiltImage:
        """Write this image into the OCI layout ``layout`` under ``tag`` (default: its name)."""
        return build_image(layout, self.layers, tag=tag or self.name, compression=self.compressions)

    def prefix(self, count: int) -> CorpusImage:
        """The image made of the first ``count`` layers (the lower tree of layer ``count``)."""
        return CorpusImage(f"{self.name}-{count}", self.layers[:count], self.compressions[:count])


def _image(
    name: str, layers: Sequence[Sequence[TarEntry]], compression: str = "gzip"
) -> CorpusImage:
    return CorpusImage(
        name, tuple(tar_bytes(layer) for layer in layers), (compression,) * len(layers)
    )


def data(seed: int, size: int, *, compressible: float = 0.5) -> bytes:
    """``size`` deterministic bytes, about ``compressible`` of them repetitive text."""
    rng = random.Random(seed)
    text = b"the quick brown fox jumps over the lazy dog %d\n" % seed
    out = bytearray()
    while len(out) < size:
        if rng.random() < compressible:
            out += text * 8
        else:
            out += rng.randbytes(256)
    return bytes(out[:size])


def sparse_file(name: str, size: int, chunks: Sequence[tuple[int, bytes]]) -> TarEntry:
    """A GNU PAX 1.0 sparse file entry: only ``chunks`` (offset, data) hold data.

    Laid out as GNU tar ``--sparse --format=posix`` writes it: the sparse map
    heads the data area, padded to a block, and a final empty chunk at
    ``size`` marks the length. Offsets and lengths must be 512-aligned, because
    GNU tar misreads unaligned maps (checked with tar 1.34).
    """
    chunk_map = [*chunks, (size, b"")]
    header = f"{len(chunk_map)}\n" + "".join(f"{off}\n{len(d)}\n" for off, d in chunk_map)
    head = header.encode()
    head += b"\0" * (-len(head) % 512)
    directory, _, base = name.rpartition("/")
    stored = f"{directory}/GNUSparseFile.0/{base}" if directory else f"GNUSparseFile.0/{base}"
    records = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": name,
        "GNU.sparse.realsize": str(size),
    }
    return T.file(stored, head + b"".join(d for _, d in chunks), pax=records)


def _basic() -> CorpusImage:
    sizes = [0, 1, 511, 512, 513, 4096, 65_537]
    return _image(
        "basic",
        [
            [
                T.dir("./"),
                T.dir("./etc"),
                T.file("./etc/hostname", b"corpus\n"),
                *(T.file(f"./data/size-{n}", data(n, n)) for n in sizes),
                T.file("./data/big", data(1, 3 << 19, compressible=0.3)),
                T.dir("./readonly", mode=0o555),
                T.file("./readonly/inside", b"in a 0555 directory"),
                T.dir("./private", mode=0o700),
                T.file("./private/secret", b"s", mode=0o600),
                T.file("./nobody-may-read", b"mode 000", mode=0o000),
                T.file("./exec-only", b"#!/bin/sh\n", mode=0o111),
                sparse_file(
                    "data/sparse",
                    8 << 20,
                    [
                        (0, data(2, 4096)),
                        (3 << 20, data(3, 4096)),
                        ((8 << 20) - 4096, data(4, 4096)),
                    ],
                ),
            ],
            [],
            [
                # Entries added to a 0555 directory of a lower layer, and changed files.
                T.file("readonly/added", b"added by a later layer"),
                T.file("etc/hostname", b"changed\n", mode=0o640),
                T.file("data/size-1", b"", mode=0o600),
                T.dir("deep/a/b/c/d/e/f/g", mode=0o751),
                T.file("deep/a/b/c/d/e/f/g/leaf", b"leaf"),
            ],
        ],
    )


def _whiteouts() -> CorpusImage:
    base = [
        T.file(".wh.never-existed"),
        T.dir("gone"),
        T.file("gone/file"),
        T.dir("gone/nested"),
        T.file("gone/nested/deeper", b"x"),
        T.dir("keep"),
        T.file("keep/a", b"a"),
        T.file("keep/b", b"b"),
        T.symlink("keep/link-to-a", "a"),
        T.dir("opq-before"),
        T.file("opq-before/lower", b"lower"),
        T.dir("opq-before/lowerdir"),
        T.file("opq-before/lowerdir/x"),
        T.dir("opq-after"),
        T.file("opq-after/lower", b"lower"),
        T.dir("opq-declared", mode=0o755),
        T.file("opq-declared/lower"),
        T.dir("ro", mode=0o555),
        T.file("ro/victim"),
        T.dir("opt", mode=0o750, uid=1000, gid=1000, xattrs={"user.origin": b"lower"}),
        T.file("opt/lower"),
        T.file("recreated", b"first"),
        T.dir("opq-implicit"),
        T.dir("opq-implicit/sub"),
        T.file("opq-implicit/sub/lower"),
        T.file("opq-implicit/lower"),
    ]
    upper = [
        T.whiteout("gone"),
        T.whiteout("keep/a"),
        T.whiteout("keep/link-to-a"),
        T.whiteout("keep/not-there"),
        # Opaque marker before, after, and with the directory's own entry after it.
        T.opaque("opq-before"),
        T.file("opq-before/new", b"new"),
        T.file("opq-after/new-first", b"new"),
        T.opaque("opq-after"),
        T.file("opq-after/new-last", b"new"),
        T.opaque("opq-declared"),
        T.dir("opq-declared", mode=0o700),
        T.whiteout("ro/victim"),
        # Parent left implicit: the lower directory's mode and owner must survive.
        T.file("opt/new"),
        T.whiteout("recreated"),
        # The marker after a new file in a subdirectory this layer does not declare.
        T.file("opq-implicit/sub/new", b"new"),
        T.opaque("opq-implicit"),
    ]
    again = [
        T.dir("gone", mode=0o711),
        T.file("gone/again", b"back"),
        T.file("recreated", b"second"),
        T.opaque("keep"),
    ]
    return _image("whiteouts", [base, upper, again])


def _opaque_root() -> CorpusImage:
    return _image(
        "opaque-root",
        [
            [T.dir("etc"), T.file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n"), T.file("top")],
            [T.file("etc/group", b"root:x:0:\n"), T.file(".wh..wh..opq"), T.file("only")],
        ],
    )


def _links() -> CorpusImage:
    lower = [
        T.dir("bin"),
        T.file("bin/busybox", data(5, 2048), mode=0o4755),
        T.hardlink("bin/sh", "bin/busybox"),
        T.hardlink("bin/ls", "bin/busybox"),
        T.hardlink("bin/cat", "bin/sh"),
        T.file("locked", b"mode 000", mode=0o000),
        T.hardlink("locked-too", "locked"),
        T.symlink("abs", "/bin/busybox"),
        T.symlink("rel", "bin/busybox"),
        T.symlink("dotdot", "../../../../../etc/shadow"),
        T.symlink("dangling", "does/not/exist"),
        T.symlink("loop-a", "loop-b"),
        T.symlink("loop-b", "loop-a"),
        T.symlink("self", "self"),
        T.symlink("dir-link", "bin"),
        T.hardlink("hard-to-symlink", "rel"),
        T.symlink(NON_UTF8 + b"-link", NON_UTF8),
        T.file("victim", b"victim"),
        T.hardlink("victim-alias", "victim"),
    ]
    upper = [
        # Hard links to files of the lower layer.
        T.hardlink("usr-bin-busybox", "bin/busybox"),
        T.hardlink("usr-bin-busybox-2", "bin/busybox"),
        T.hardlink("locked-upper", "locked"),
        # Replacing one name of a hard-linked pair leaves the other alone.
        T.file("victim", b"replaced"),
        T.symlink("bin/ls", "busybox"),
        T.whiteout("locked-too"),
    ]
    return _image("links", [lower, upper])


def _symlink_parents() -> CorpusImage:
    """Entries of an upper layer below a lower layer's symlink to a directory.

    Flat unpackers (umoci, docker's vfs driver, ours) follow the symlink inside
    the root; a layer directory under overlayfs (containerd, docker's overlay
    driver, buildkit's ``COPY --link``) shadows it with a directory instead.
    """
    return _image(
        "symlink-parents",
        [
            [
                T.dir("usr"),
                T.dir("usr/lib"),
                T.file("usr/lib/libc.so", b"libc"),
                T.symlink("lib", "/usr/lib"),
                T.symlink("lib64", "usr/lib"),
                T.dir("bin"),
                T.symlink("dir-link", "bin"),
            ],
            [
                T.file("lib/libthrough.so", b"through an absolute link"),
                T.file("lib64/ld.so", b"through a relative link"),
                T.file("dir-link/tool", b"through a link to a sibling"),
            ],
        ],
    )


def _special() -> CorpusImage:
    return _image(
        "special",
        [
            [
                T.dir("dev"),
                T.char("dev/null", 1, 3, mode=0o666),
                T.char("dev/tty", 5, 0, mode=0o620, gid=5),
                T.block("dev/loop0", 7, 0, mode=0o660, gid=6),
                T.block("dev/big-numbers", 259, 1_048_575, mode=0o600),
                T.fifo("dev/initctl", mode=0o600),
                T.fifo("pipe-in-root"),
                T.dir("tmp", mode=0o1777),
                T.dir("shared", mode=0o2775, gid=50),
                T.file("setuid", b"u", mode=0o4755),
                T.file("setgid", b"g", mode=0o2711, gid=42),
                T.file("all-bits", b"a", mode=0o7777),
                T.file("sticky-file", b"t", mode=0o1644),
            ],
            [
                T.char("dev/null", 1, 3, mode=0o600),
                T.fifo("dev/new-fifo", mode=0o640, uid=3, gid=4),
            ],
        ],
    )


def _metadata() -> CorpusImage:
    long_dir = "/".join(["long-directory-name-" + "x" * 40] * 5)
    return _image(
        "metadata",
        [
            [
                T.dir("home"),
                T.dir("home/user", mode=0o750, uid=1000, gid=1000),
                T.file("home/user/.profile", b"export A=1\n", uid=1000, gid=1000),
                T.file("owned-by-nobody", b"n", uid=65534, gid=65534, uname="root", gname="root"),
                T.file("high-ids", b"h", uid=100_000, gid=200_000),
                T.symlink("owned-symlink", "high-ids", uid=12, gid=34),
                T.file(
                    "ping",
                    b"ELF",
                    mode=0o4755,
                    uid=0,
                    gid=0,
                    xattrs={"security.capability": CAP_NET_RAW},
                ),
                T.file(
                    "capable-user", b"c", uid=5, gid=5, xattrs={"security.capability": CAP_NET_RAW}
                ),
                T.dir("xattr-dir", xattrs={"user.a": b"1", "trusted.b": b"2"}),
                T.file(
                    "xattr-file",
                    b"x",
                    xattrs={
                        "user.text": b"plain",
                        "user.binary": b"\x00\xff\x01",
                        "trusted.t": b"t",
                    },
                ),
                T.fifo("xattr-fifo", xattrs={"trusted.on-fifo": b"f"}),
                T.symlink("xattr-symlink", "xattr-file", xattrs={"trusted.on-symlink": b"s"}),
                T.file("mtime-old", b"o", mtime=1),
                T.symlink("mtime-symlink", "mtime-old", mtime=2),
                T.dir("mtime-dir", mtime=3),
                T.file("l" * 150, b"name over 100 bytes"),
                T.file(LONG_COMPONENT, b"name of 255 bytes"),
                T.dir(long_dir),
                T.file(f"{long_dir}/{LONG_COMPONENT}", b"path over 255 bytes"),
                T.file(NON_UTF8, b"non-UTF-8 name"),
                T.dir(b"dir-\xff\xfe"),
                T.file(b"dir-\xff\xfe/\x80\x81", b"non-UTF-8 all the way"),
                T.file("unicode-\u00e9\u4e2d\U0001f600", b"UTF-8 name"),
                T.file("spaces and\ttabs\nnewline", b"odd characters"),
            ],
            [
                # A directory declared again: new mode, owner and xattrs replace the old.
                T.dir("xattr-dir", mode=0o700, uid=7, gid=8, xattrs={"user.new": b"n"}),
                T.dir("home/user", mode=0o700, uid=1001, gid=1001),
                T.file("mtime-dir/child", b"changes the directory", mtime=4),
                T.file("xattr-file", b"y", xattrs={"user.text": b"replaced"}),
            ],
        ],
    )


def _replacements() -> CorpusImage:
    first = [
        T.file("f2d", b"file"),
        T.dir("d2f"),
        T.file("d2f/child"),
        T.dir("d2f/sub"),
        T.file("d2f/sub/grandchild"),
        T.file("f2s", b"file"),
        T.symlink("s2f", "target"),
        T.dir("d2s"),
        T.file("d2s/child"),
        T.symlink("s2d", "/etc"),
        T.file("f2p", b"file"),
        T.fifo("p2f"),
        T.char("c2f", 1, 3),
        T.file("f2c"),
        T.symlink("s2s", "old-target"),
        T.file("meta", b"same", mode=0o600, uid=1),
        # Within one layer, the later entry wins.
        T.file("same-layer", b"first"),
        T.dir("same-layer", mode=0o700),
        T.file("same-layer/child"),
        T.dir("same-layer-2"),
        T.file("same-layer-2/child"),
        T.symlink("same-layer-2", "elsewhere"),
    ]
    second = [
        T.dir("f2d", mode=0o750),
        T.file("d2f", b"now a file"),
        T.symlink("f2s", "somewhere"),
        T.file("s2f", b"was a symlink"),
        T.symlink("d2s", "d2f"),
        T.dir("s2d", mode=0o711),
        T.file("s2d/inside", b"not in /etc"),
        T.fifo("f2p"),
        T.file("p2f", b"was a fifo"),
        T.file("c2f", b"was a device"),
        T.char("f2c", 1, 5),
        T.symlink("s2s", "new-target"),
        T.file("meta", b"same", mode=0o644, uid=2),
    ]
    third = [
        T.file("f2d", b"file again"),
        T.dir("d2f"),
        T.file("d2f/new"),
    ]
    return _image("replacements", [first, second, third])


def _compressions() -> CorpusImage:
    layers = [
        [T.dir("gz"), T.file("gz/data", data(10, 200_000))],
        [T.dir("zst"), T.file("zst/data", data(11, 200_000)), T.whiteout("gz/data")],
        [],
        [T.dir("raw"), T.file("raw/data", data(12, 200_000)), T.file("zst/data", b"overwritten")],
        [T.file("gz/again", b"")],
    ]
    return CorpusImage(
        "compressions",
        tuple(tar_bytes(layer) for layer in layers),
        ("gzip", "zstd", "zstd", "none", "gzip"),
    )


CORPUS: tuple[CorpusImage, ...] = (
    _basic(),
    _whiteouts(),
    _opaque_root(),
    _links(),
    _symlink_parents(),
    _special(),
    _metadata(),
    _replacements(),
    _compressions(),
)
"""Every corpus image; ``by_name`` finds one."""


def by_name(name: str) -> CorpusImage:
    for image in CORPUS:
        if image.name == name:
            return image
    raise KeyError(f"no corpus image {name!r}; have {[i.name for i in CORPUS]}")
