"""Applying layers: media types, FLAT and LAYERFS semantics, entry types and metadata.

Runs as root (as CI does); the unprivileged differences are in test_privileges.py.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from support.corpus import CAP_NET_RAW, NON_UTF8, sparse_file
from support.oci import LAYER_MEDIA_TYPES, TarEntry, build_image, compress, tar_bytes
from support.tree import (
    INTENDED_FLAT_DIFFERENCES,
    Kind,
    assert_trees_equal,
    layer_snapshot,
    snapshot,
)
from unpacked.digest import Digest
from unpacked.errors import LayerError, VerificationError
from unpacked.layers import (
    ApplyReport,
    Target,
    apply_layer,
    open_layer,
    unpack_flat,
    unpack_layer,
)
from unpacked.publish import WhiteoutForm, open_publisher

T = TarEntry
MTIME = 1_700_000_000
EMPTY_GZIP_LAYER = bytes.fromhex("1f8b080000096e8800ff621805a360148c5800080000ffff2eafb5ef00040000")
"""The 32-byte gzip layer of 1024 zero bytes that docker puts in many images."""

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layer tests run as root")


def flat(root: Path, *layers: list[TarEntry]) -> list[ApplyReport]:
    root.mkdir(exist_ok=True)
    return [
        apply_layer(io.BytesIO(tar_bytes(entries)), root, target=Target.FLAT, name=f"L{i}")
        for i, entries in enumerate(layers)
    ]


def layerfs(
    root: Path,
    entries: list[TarEntry],
    lower: Path | None = None,
    whiteouts: WhiteoutForm | None = None,
) -> ApplyReport:
    root.mkdir()
    tar = io.BytesIO(tar_bytes(entries))
    return apply_layer(
        tar, root, target=Target.LAYERFS, whiteouts=whiteouts, lower=lower, name="lfs"
    )


def blob_args(data: bytes, compression: str) -> tuple[io.BytesIO, str, Digest]:
    return io.BytesIO(compress(data, compression)), LAYER_MEDIA_TYPES[compression], Digest.of(data)


# --- streams and media types ------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_each_compression_unpacks_and_verifies(tmp_path: Path, compression: str) -> None:
    data = tar_bytes([T.dir("d"), T.file("d/f", b"x" * 100_000)])
    blob, media_type, diff_id = blob_args(data, compression)
    report = unpack_layer(blob, media_type, diff_id, tmp_path, target=Target.FLAT, name="c")
    assert (tmp_path / "d/f").read_bytes() == b"x" * 100_000
    assert (report.entries, report.bytes_written) == (2, 100_000)


def test_docker_gzip_media_type(tmp_path: Path) -> None:
    data = tar_bytes([T.file("f", b"docker")])
    report = unpack_layer(
        io.BytesIO(gzip.compress(data)),
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        Digest.of(data),
        tmp_path,
        target=Target.FLAT,
        name="docker",
    )
    assert report.entries == 1
    assert (tmp_path / "f").read_bytes() == b"docker"


def test_multi_member_gzip_and_multi_frame_zstd(tmp_path: Path) -> None:
    data = tar_bytes([T.file(f"f{i}", os.urandom(3000)) for i in range(20)])
    cut = len(data) // 3
    members = gzip.compress(data[:cut]) + gzip.compress(data[cut:])
    frames = b"".join(
        zstandard.ZstdCompressor().compress(part) for part in (data[:cut], data[cut:])
    )
    for blob, kind in ((members, "gzip"), (frames, "zstd")):
        root = tmp_path / kind
        root.mkdir()
        unpack_layer(
            io.BytesIO(blob),
            LAYER_MEDIA_TYPES[kind],
            Digest.of(data),
            root,
            target=Target.FLAT,
            name=kind,
        )
        assert sorted(p.name for p in root.iterdir()) == sorted(f"f{i}" for i in range(20))


@pytest.mark.parametrize(
    "media_type",
    [
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    ],
)
def test_non_distributable_layers_are_refused(media_type: str) -> None:
    with pytest.raises(LayerError, match=r"layer windows-base: .*non-distributable"):
        open_layer(io.BytesIO(b""), media_type, name="windows-base").__enter__()


def test_unknown_media_type_is_refused() -> None:
    with pytest.raises(LayerError, match=r"layer x: unknown layer media type 'text/plain'"):
        open_layer(io.BytesIO(b""), "text/plain", name="x").__enter__()


def test_open_layer_streams_decompressed_tar() -> None:
    data = tar_bytes([T.file("a", b"1")])
    with open_layer(io.BytesIO(gzip.compress(data)), LAYER_MEDIA_TYPES["gzip"], name="s") as s:
        out = b""
        while chunk := s.read(100):
            assert len(chunk) <= 100
            out += chunk
    assert out == data


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_truncated_compressed_stream_is_an_error(tmp_path: Path, compression: str) -> None:
    data = tar_bytes([T.file("f", os.urandom(200_000))])
    blob = compress(data, compression)
    with pytest.raises(LayerError, match=r"layer cut: .*(truncated|ends early)"):
        unpack_layer(
            io.BytesIO(blob[: len(blob) // 2]),
            LAYER_MEDIA_TYPES[compression],
            Digest.of(data),
            tmp_path,
            target=Target.FLAT,
            name="cut",
        )


def test_corrupt_gzip_is_a_layer_error(tmp_path: Path) -> None:
    blob = bytearray(gzip.compress(tar_bytes([T.file("f", os.urandom(5000))])))
    blob[-6] ^= 0xFF  # inside the CRC/size trailer
    with pytest.raises(LayerError, match="layer bad: corrupt gzip stream"):
        unpack_layer(
            io.BytesIO(bytes(blob)),
            LAYER_MEDIA_TYPES["gzip"],
            Digest.of(b""),
            tmp_path,
            target=Target.FLAT,
            name="bad",
        )


def test_well_known_empty_gzip_layer(tmp_path: Path) -> None:
    assert hashlib.sha256(EMPTY_GZIP_LAYER).hexdigest() == (
        "a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4"
    )
    diff_id = Digest.of(b"\0" * 1024)
    report = unpack_layer(
        io.BytesIO(EMPTY_GZIP_LAYER),
        LAYER_MEDIA_TYPES["gzip"],
        diff_id,
        tmp_path,
        target=Target.FLAT,
        name="empty",
    )
    assert report.entries == 0 and report.warnings == ()
    assert report.diff_size == 1024
    assert list(tmp_path.iterdir()) == []


def test_zero_length_stream_is_an_empty_layer(tmp_path: Path) -> None:
    report = apply_layer(io.BytesIO(b""), tmp_path, target=Target.FLAT, name="nothing")
    assert report.entries == 0
    assert list(tmp_path.iterdir()) == []


def test_diff_id_mismatch_names_the_layer(tmp_path: Path) -> None:
    data = tar_bytes([T.file("f", b"content")])
    with pytest.raises(VerificationError, match=r"layer sha-check .*diff_id.*digest mismatch"):
        unpack_layer(
            io.BytesIO(gzip.compress(data)),
            LAYER_MEDIA_TYPES["gzip"],
            Digest.of(data + b"x"),
            tmp_path,
            target=Target.FLAT,
            name="sha-check",
        )


def test_diff_id_covers_trailing_zero_blocks(tmp_path: Path) -> None:
    data = tar_bytes([T.file("f", b"content")]) + b"\0" * 8192
    blob = gzip.compress(data)
    for root in (tmp_path / "ok", tmp_path / "bad"):
        root.mkdir()
    report = unpack_layer(
        io.BytesIO(blob),
        LAYER_MEDIA_TYPES["gzip"],
        Digest.of(data),
        tmp_path / "ok",
        target=Target.FLAT,
        name="padded",
    )
    assert (tmp_path / "ok/f").read_bytes() == b"content"
    assert report.diff_size == len(data)
    with pytest.raises(VerificationError, match="layer padded"):
        unpack_layer(
            io.BytesIO(blob),
            LAYER_MEDIA_TYPES["gzip"],
            Digest.of(data[:-8192]),
            tmp_path / "bad",
            target=Target.FLAT,
            name="padded",
        )


def test_media_type_that_lies_about_compression_still_unpacks(tmp_path: Path) -> None:
    # docker and containerd detect the compression from the bytes.
    data = tar_bytes([T.file("f", b"plain")])
    unpack_layer(
        io.BytesIO(data),
        LAYER_MEDIA_TYPES["gzip"],
        Digest.of(data),
        tmp_path,
        target=Target.FLAT,
        name="liar",
    )
    assert (tmp_path / "f").read_bytes() == b"plain"


def test_unpack_flat_applies_layers_in_order(tmp_path: Path) -> None:
    one = tar_bytes([T.file("a", b"1"), T.file("b", b"1")])
    two = tar_bytes([T.file("a", b"2"), T.whiteout("b")])
    reports = unpack_flat([blob_args(one, "gzip"), blob_args(two, "zstd")], tmp_path)
    assert [r.entries for r in reports] == [2, 2]
    assert [r.whiteouts for r in reports] == ["resolved", "resolved"]
    assert sorted(os.listdir(tmp_path)) == ["a"]
    assert (tmp_path / "a").read_bytes() == b"2"


def test_flat_rejects_a_lower_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="LAYERFS"):
        apply_layer(io.BytesIO(b""), tmp_path, target=Target.FLAT, lower=tmp_path)


# --- FLAT: whiteouts, opaque directories, replacements ------------------------------


def test_whiteout_removes_file_and_directory_tree(tmp_path: Path) -> None:
    flat(
        tmp_path,
        [T.dir("d"), T.file("d/f"), T.dir("d/sub"), T.file("d/sub/x"), T.file("keep")],
        [T.whiteout("d/f"), T.whiteout("d/sub"), T.whiteout("never-existed")],
    )
    assert sorted(os.listdir(tmp_path)) == ["d", "keep"]
    assert os.listdir(tmp_path / "d") == []


def test_whiteout_does_not_remove_what_the_same_layer_created(tmp_path: Path) -> None:
    flat(tmp_path, [T.file("a", b"lower")], [T.file("a", b"upper"), T.whiteout("a")])
    assert (tmp_path / "a").read_bytes() == b"upper"


@pytest.mark.parametrize("marker_first", [True, False])
def test_opaque_directory_hides_only_lower_content(tmp_path: Path, marker_first: bool) -> None:
    upper = [T.dir("d"), T.file("d/new", b"n"), T.dir("d/sub"), T.file("d/sub/mine")]
    marker = [T.opaque("d")]
    flat(
        tmp_path,
        [T.dir("d"), T.file("d/old"), T.dir("d/sub"), T.file("d/sub/old"), T.file("other")],
        marker + upper if marker_first else upper + marker,
    )
    assert sorted(os.listdir(tmp_path)) == ["d", "other"]
    assert sorted(os.listdir(tmp_path / "d")) == ["new", "sub"]
    assert os.listdir(tmp_path / "d/sub") == ["mine"]


def test_opaque_root_keeps_this_layers_entries_in_lower_directories(tmp_path: Path) -> None:
    flat(
        tmp_path,
        [T.dir("etc"), T.file("etc/passwd"), T.file("top")],
        [T.file("etc/group"), T.opaque("."), T.file("only")],
    )
    assert sorted(os.listdir(tmp_path)) == ["etc", "only"]
    assert os.listdir(tmp_path / "etc") == ["group"]


def test_no_whiteout_files_remain_in_a_flat_tree(tmp_path: Path) -> None:
    flat(tmp_path, [T.dir("a"), T.file("a/x")], [T.whiteout("a/x"), T.opaque("a"), T.whiteout("z")])
    names = [n for _, dirs, files in os.walk(tmp_path) for n in dirs + files]
    assert not [n for n in names if n.startswith(".wh.")]


def test_later_entries_replace_earlier_ones_of_any_type(tmp_path: Path) -> None:
    flat(
        tmp_path,
        [
            T.file("file-to-dir"),
            T.dir("dir-to-file"),
            T.file("dir-to-file/child"),
            T.dir("real"),
            T.symlink("link-to-dir", "real"),
            T.symlink("link-to-file", "real"),
            T.dir("merge", mode=0o700, xattrs={"user.old": b"1"}),
            T.file("merge/kept"),
        ],
        [
            T.dir("file-to-dir"),
            T.file("dir-to-file", b"now a file"),
            T.dir("link-to-dir"),
            T.file("link-to-file", b"f"),
            T.dir("merge", mode=0o751, mtime=MTIME + 5, xattrs={"user.new": b"2"}),
            T.file("merge/added"),
        ],
    )
    assert (tmp_path / "file-to-dir").is_dir()
    assert (tmp_path / "dir-to-file").read_bytes() == b"now a file"
    assert not (tmp_path / "link-to-dir").is_symlink() and (tmp_path / "link-to-dir").is_dir()
    assert (tmp_path / "link-to-file").read_bytes() == b"f"
    assert (tmp_path / "real").is_dir() and os.listdir(tmp_path / "real") == []
    merge = tmp_path / "merge"
    assert sorted(os.listdir(merge)) == ["added", "kept"]
    st = merge.stat()
    assert stat.S_IMODE(st.st_mode) == 0o751 and st.st_mtime_ns == (MTIME + 5) * 10**9
    assert os.listxattr(merge) == ["user.new"]


def test_parent_symlink_resolves_inside_the_root(tmp_path: Path) -> None:
    flat(
        tmp_path,
        [
            T.dir("usr"),
            T.dir("usr/lib"),
            T.symlink("lib", "usr/lib"),
            T.symlink("abs", "/usr/lib"),
            T.symlink("up", "../../../../usr"),
        ],
        [T.file("lib/rel", b"1"), T.file("abs/absolute", b"2"), T.file("up/lib/dotdot", b"3")],
    )
    assert sorted(os.listdir(tmp_path / "usr/lib")) == ["absolute", "dotdot", "rel"]
    assert os.readlink(tmp_path / "lib") == "usr/lib"


def test_lower_directory_times_survive_a_later_layer(tmp_path: Path) -> None:
    flat(tmp_path, [T.dir("d", mtime=MTIME), T.file("d/a")], [T.file("d/b"), T.whiteout("d/a")])
    assert (tmp_path / "d").stat().st_mtime_ns == MTIME * 10**9


# --- entry types and metadata ---------------------------------------------------------


def test_modes_owners_and_special_bits(tmp_path: Path) -> None:
    flat(
        tmp_path,
        [
            T.file("suid", b"x", mode=0o4755, uid=1000, gid=1000),
            T.file("sgid", b"x", mode=0o2755, uid=0, gid=50),
            T.dir("sticky", mode=0o1777),
            T.file("plain", b"x", mode=0o640, uid=123, gid=456),
        ],
    )
    modes = {n: os.lstat(tmp_path / n) for n in ("suid", "sgid", "sticky", "plain")}
    assert stat.S_IMODE(modes["suid"].st_mode) == 0o4755
    assert (modes["suid"].st_uid, modes["suid"].st_gid) == (1000, 1000)
    assert stat.S_IMODE(modes["sgid"].st_mode) == 0o2755 and modes["sgid"].st_gid == 50
    assert stat.S_IMODE(modes["sticky"].st_mode) == 0o1777
    assert (modes["plain"].st_uid, modes["plain"].st_gid) == (123, 456)


def test_owner_access_is_added_and_reported(tmp_path: Path) -> None:
    (report,) = flat(
        tmp_path,
        [
            T.dir("ro", mode=0o555),
            T.file("ro/child", b"c"),
            T.dir("ro/sub", mode=0o500),
            T.file("none", b"n", mode=0o000),
            T.file("exec-only", b"e", mode=0o111),
        ],
    )
    expected = {"ro": 0o755, "ro/sub": 0o700, "none": 0o400, "exec-only": 0o511, "ro/child": 0o644}
    for path, mode in expected.items():
        assert stat.S_IMODE(os.lstat(tmp_path / path).st_mode) == mode, path
    assert set(report.permission_fixes) == {
        ("ro", 0o555, 0o755),
        ("ro/sub", 0o500, 0o700),
        ("none", 0o000, 0o400),
        ("exec-only", 0o111, 0o511),
    }


def test_mtimes_of_files_symlinks_and_directories(tmp_path: Path) -> None:
    flat(
        tmp_path,
        [
            T.dir("d", mtime=MTIME + 1),
            T.file("d/f", b"x", mtime=MTIME + 2),
            T.symlink("d/l", "f", mtime=MTIME + 3),
            T.file("d/precise", b"", pax={"mtime": "1700000000.123456789"}),
        ],
    )
    ns = 10**9
    assert os.lstat(tmp_path / "d").st_mtime_ns == (MTIME + 1) * ns
    assert os.lstat(tmp_path / "d/f").st_mtime_ns == (MTIME + 2) * ns
    assert os.lstat(tmp_path / "d/l").st_mtime_ns == (MTIME + 3) * ns
    assert os.lstat(tmp_path / "d/precise").st_mtime_ns == 1_700_000_000_123_456_789


def test_symlinks_are_stored_as_written(tmp_path: Path) -> None:
    links = {"abs": "/etc/passwd", "rel": "../x/y", "dangling": "nowhere", "dot": "."}
    flat(tmp_path, [T.symlink(name, target, uid=7, gid=8) for name, target in links.items()])
    for name, target in links.items():
        assert os.readlink(tmp_path / name) == target
        assert (os.lstat(tmp_path / name).st_uid, os.lstat(tmp_path / name).st_gid) == (7, 8)


def test_hard_links_within_a_layer_and_to_lower_layers(tmp_path: Path) -> None:
    flat(
        tmp_path,
        [T.dir("bin"), T.file("bin/busybox", b"bb", mode=0o755)],
        [
            T.hardlink("bin/sh", "bin/busybox"),
            T.file("new", b"n"),
            T.hardlink("/alias", "./new"),
            T.symlink("sl", "new"),
            T.hardlink("sl-link", "sl"),
        ],
    )
    bb, sh = os.lstat(tmp_path / "bin/busybox"), os.lstat(tmp_path / "bin/sh")
    assert (bb.st_ino, bb.st_nlink) == (sh.st_ino, 2)
    assert os.lstat(tmp_path / "alias").st_ino == os.lstat(tmp_path / "new").st_ino
    assert os.lstat(tmp_path / "sl-link").st_ino == os.lstat(tmp_path / "sl").st_ino
    assert os.path.islink(tmp_path / "sl-link")


def test_hard_link_to_missing_target_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LayerError, match=r"layer L0: hard link 'h' -> 'missing': target not found"):
        flat(tmp_path, [T.hardlink("h", "missing")])


def test_devices_and_fifos_as_root(tmp_path: Path) -> None:
    (report,) = flat(
        tmp_path,
        [
            T.char("null", 1, 3, mode=0o666),
            T.block("loop9", 7, 9, mode=0o660, gid=6),
            T.fifo("pipe", mode=0o620),
        ],
    )
    null, loop, pipe = (os.lstat(tmp_path / n) for n in ("null", "loop9", "pipe"))
    assert (
        stat.S_ISCHR(null.st_mode) and os.major(null.st_rdev) == 1 and os.minor(null.st_rdev) == 3
    )
    assert stat.S_IMODE(null.st_mode) == 0o666
    assert stat.S_ISBLK(loop.st_mode) and (os.major(loop.st_rdev), os.minor(loop.st_rdev)) == (7, 9)
    assert loop.st_gid == 6
    assert stat.S_ISFIFO(pipe.st_mode) and stat.S_IMODE(pipe.st_mode) == 0o620
    assert report.skipped == ()


def test_long_and_non_utf8_names(tmp_path: Path) -> None:
    long_dir = "/".join(["d" * 100] * 5)
    entries = [
        T.dir(long_dir),
        T.file(f"{long_dir}/{'f' * 255}", b"long"),
        T.file(NON_UTF8, b"latin-1"),
        T.symlink(b"link-\xff", b"target-\xfe"),
    ]
    flat(tmp_path, entries)
    assert (tmp_path / long_dir / ("f" * 255)).read_bytes() == b"long"
    raw = os.fsencode(tmp_path)
    with open(raw + b"/" + NON_UTF8, "rb") as f:
        assert f.read() == b"latin-1"
    assert os.readlink(raw + b"/link-\xff") == b"target-\xfe"


def test_gnu_format_long_names(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as tar:
        info = tarfile.TarInfo("g" * 150 + "/" + "h" * 200)
        info.size = 3
        tar.addfile(info, io.BytesIO(b"gnu"))
        link = tarfile.TarInfo("l")
        link.type, link.linkname = tarfile.SYMTYPE, "t" * 300
        tar.addfile(link)
    apply_layer(io.BytesIO(buffer.getvalue()), tmp_path, target=Target.FLAT)
    assert (tmp_path / ("g" * 150) / ("h" * 200)).read_bytes() == b"gnu"
    assert os.readlink(tmp_path / "l") == "t" * 300


def test_xattrs_binary_values_and_capabilities(tmp_path: Path) -> None:
    (report,) = flat(
        tmp_path,
        [
            T.file("ping", b"elf", mode=0o755, uid=0, xattrs={"security.capability": CAP_NET_RAW}),
            T.file("tagged", b"", xattrs={"user.bin": b"\x00\xff\x80", "user.text": b"t"}),
            T.dir("dir", xattrs={"user.d": b"1"}),
            T.symlink("link", "tagged", xattrs={"trusted.sym": b"s"}),
            T.file("sneaky", b"", xattrs={"trusted.overlay.opaque": b"y"}),
        ],
    )
    assert os.getxattr(tmp_path / "ping", "security.capability") == CAP_NET_RAW
    assert os.getxattr(tmp_path / "tagged", "user.bin") == b"\x00\xff\x80"
    assert os.getxattr(tmp_path / "dir", "user.d") == b"1"
    assert os.getxattr(tmp_path / "link", "trusted.sym", follow_symlinks=False) == b"s"
    assert os.listxattr(tmp_path / "sneaky") == []
    assert any("trusted.overlay" in w and "sneaky" in w for w in report.warnings)


def test_capability_survives_a_non_root_owner(tmp_path: Path) -> None:
    # chown clears security.capability: it must be set after the owner.
    flat(
        tmp_path,
        [T.file("cap", b"", uid=1000, gid=1000, xattrs={"security.capability": CAP_NET_RAW})],
    )
    assert os.getxattr(tmp_path / "cap", "security.capability") == CAP_NET_RAW


def test_sparse_files_get_their_holes(tmp_path: Path) -> None:
    size = 64 << 20
    chunks = [(0, b"a" * 4096), (32 << 20, b"b" * 4096), (size - 4096, b"c" * 4096)]
    (report,) = flat(tmp_path, [sparse_file("sparse", size, chunks)])
    path = tmp_path / "sparse"
    st = path.stat()
    assert st.st_size == size
    assert st.st_blocks * 512 < 1 << 20  # holes, not 64 MiB of zeros
    with path.open("rb") as f:
        for offset, data in chunks:
            f.seek(offset)
            assert f.read(len(data)) == data
        f.seek(4096)
        assert f.read(4096) == b"\0" * 4096
    assert report.bytes_written == 3 * 4096


def test_gnu_tar_sparse_formats(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    with (source / "holes").open("wb") as f:
        f.seek(10 << 20)
        f.write(b"end")
    for fmt in ("gnu", "posix"):
        tar = subprocess.run(
            ["tar", "-C", str(source), "--sparse", f"--format={fmt}", "-cf", "-", "holes"],
            check=True,
            capture_output=True,
        ).stdout
        root = tmp_path / fmt
        root.mkdir()
        apply_layer(io.BytesIO(tar), root, target=Target.FLAT, name=fmt)
        assert (root / "holes").stat().st_size == (10 << 20) + 3
        assert (root / "holes").stat().st_blocks * 512 < 1 << 20
        with (root / "holes").open("rb") as f:
            f.seek(10 << 20)
            assert f.read() == b"end"


def test_root_entry_sets_root_metadata(tmp_path: Path) -> None:
    flat(tmp_path, [T.dir("./", mode=0o750, mtime=MTIME), T.file("f")])
    st = tmp_path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o750 and st.st_mtime_ns == MTIME * 10**9


def test_report_is_bounded(tmp_path: Path) -> None:
    (report,) = flat(tmp_path, [T.file(f"f{i}", mode=0o000) for i in range(1200)])
    assert len(report.permission_fixes) == 1000
    assert any("200 more permission fixes" in w for w in report.warnings)


def test_garbage_after_end_of_archive_is_ignored_with_a_warning(tmp_path: Path) -> None:
    data = tar_bytes([T.file("f", b"1")]) + b"trailing junk"
    report = apply_layer(io.BytesIO(data), tmp_path, target=Target.FLAT)
    assert (tmp_path / "f").read_bytes() == b"1"
    assert any("after the end-of-archive" in w for w in report.warnings)


def test_file_system_without_xattrs_gives_one_warning(ramfs: Path) -> None:
    entries = [T.file(f"f{i}", b"", xattrs={"user.a": b"1", "trusted.b": b"2"}) for i in range(5)]
    root = ramfs / "flat"
    (report,) = flat(root, entries)
    assert report.warnings == ("file system does not support xattrs (10 times, first: 'f0')",)
    assert sorted(os.listdir(root)) == [f"f{i}" for i in range(5)]


def test_layerfs_on_a_file_system_without_xattrs_keeps_whiteout_files(
    ramfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The publisher probes where it stages and says so once (the layer no longer probes).
    form = open_publisher(f"dir:{ramfs / 'repo'}").capabilities.whiteouts
    assert form is WhiteoutForm.AUFS
    assert caplog.text.count("kept as .wh. files") == 1
    entries = [T.dir("d"), T.whiteout("d/x"), T.opaque("d")]
    report = layerfs(ramfs / "layer", entries, whiteouts=form)
    assert report.whiteouts == "wh-files"
    assert report.warnings == ()
    assert sorted(os.listdir(ramfs / "layer/d")) == [".wh..wh..opq", ".wh.x"]


def test_layerfs_takes_the_whiteout_form_it_is_given(tmp_path: Path) -> None:
    # The target could hold overlay whiteouts: the form asked for wins, no probe.
    entries = [T.dir("d"), T.whiteout("d/x"), T.opaque("d"), T.whiteout("top")]
    report = layerfs(tmp_path / "l", entries, whiteouts=WhiteoutForm.AUFS)
    assert report.whiteouts == "wh-files"
    assert sorted(os.listdir(tmp_path / "l")) == [".wh.top", "d"]
    assert sorted(os.listdir(tmp_path / "l/d")) == [".wh..wh..opq", ".wh.x"]


# --- LAYERFS ----------------------------------------------------------------------------


def test_layerfs_whiteouts_become_overlay_form(tmp_path: Path) -> None:
    entries = [T.dir("d"), T.whiteout("d/gone"), T.opaque("d"), T.whiteout("top")]
    report = layerfs(tmp_path / "l", entries)
    assert report.whiteouts == "overlay"
    gone = os.lstat(tmp_path / "l/d/gone")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0 and stat.S_IMODE(gone.st_mode) == 0
    assert os.getxattr(tmp_path / "l/d", "trusted.overlay.opaque") == b"y"
    assert sorted(os.listdir(tmp_path / "l")) == ["d", "top"]
    assert os.listdir(tmp_path / "l/d") == ["gone"]


def test_layerfs_matches_the_layer_model(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    flat(
        lower,
        [
            T.dir("usr", mode=0o751, uid=3, xattrs={"user.u": b"1"}),
            T.dir("usr/bin"),
            T.file("usr/bin/tool", b"lower tool", mode=0o755, uid=5),
            T.file("etc-file"),
        ],
    )
    layer = [
        T.file("usr/bin/new", b"n"),  # usr, usr/bin only implicit: inherit lower metadata
        T.hardlink("usr/bin/tool-link", "usr/bin/tool"),  # lower target: a copy
        T.file("mine"),
        T.hardlink("mine-link", "mine"),  # same layer: same inode
        T.whiteout("etc-file"),
        T.dir("opq"),
        T.opaque("opq"),
        T.symlink("sym", "/usr/bin/tool"),
        T.fifo("fifo"),
        T.char("dev", 4, 5),
    ]
    layerfs(tmp_path / "layer", layer, lower=lower)
    expected = layer_snapshot(tar_bytes(layer), lower=snapshot(lower))
    assert_trees_equal(expected, tmp_path / "layer")
    assert (tmp_path / "layer/usr/bin/tool-link").read_bytes() == b"lower tool"


def test_layerfs_hard_link_to_lower_without_lower_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LayerError, match="target not found"):
        layerfs(tmp_path / "l", [T.hardlink("h", "from-lower")])


def test_layerfs_opaque_root_is_spelled_out(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    flat(lower, [T.dir("etc"), T.file("etc/passwd"), T.file("top")])
    layer = [T.file("etc/group"), T.opaque("."), T.file("only")]
    layerfs(tmp_path / "layer", layer, lower=lower)
    assert_trees_equal(layer_snapshot(tar_bytes(layer), lower=snapshot(lower)), tmp_path / "layer")
    top = os.lstat(tmp_path / "layer/top")
    assert stat.S_ISCHR(top.st_mode) and top.st_rdev == 0


def test_layerfs_keeps_a_snapshot_of_kinds(tmp_path: Path) -> None:
    layerfs(tmp_path / "l", [T.file("a"), T.symlink("b", "a"), T.dir("c")])
    nodes = snapshot(tmp_path / "l")
    assert [nodes[p].kind for p in (b"a", b"b", b"c")] == [Kind.FILE, Kind.SYMLINK, Kind.DIR]


@pytest.mark.parametrize("module_name", ["zlib", "isal.isal_zlib"])
def test_every_gzip_backend_handles_members_and_corruption(
    module_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from unpacked.layers import _compression

    module = pytest.importorskip(module_name)
    monkeypatch.setattr(_compression, "_new_inflater", lambda: module.decompressobj(31))
    monkeypatch.setattr(_compression, "_GZIP_ERRORS", (module.error,))
    data = os.urandom(300_000)
    members = gzip.compress(data[:1000]) + gzip.compress(b"") + gzip.compress(data[1000:])
    with open_layer(io.BytesIO(members), LAYER_MEDIA_TYPES["gzip"], name="m") as stream:
        out = b"".join(iter(lambda: stream.read(1 << 16), b""))
    assert out == data
    corrupt = bytearray(members)
    corrupt[-5] ^= 1  # the last member's length field
    bad = open_layer(io.BytesIO(bytes(corrupt)), LAYER_MEDIA_TYPES["gzip"], name="m")
    with pytest.raises(LayerError, match="layer m: corrupt gzip stream"), bad as stream:
        while stream.read(1 << 16):
            pass


# --- umoci as the oracle for symlinked parents and replacements -----------------------

UMOCI_CASES: dict[str, list[list[TarEntry]]] = {
    "relative-parent": [
        [T.dir("usr"), T.dir("usr/lib"), T.symlink("lib", "usr/lib")],
        [T.file("lib/x", b"1")],
    ],
    "absolute-parent": [
        [T.dir("usr"), T.dir("usr/lib"), T.symlink("lib", "/usr/lib")],
        [T.file("lib/x", b"1")],
    ],
    "dotdot-parent": [[T.dir("usr"), T.symlink("up", "../../..")], [T.file("up/usr/x", b"1")]],
    "dangling-parent": [[T.symlink("gone", "/nonexistent/dir")], [T.file("gone/x", b"1")]],
    "whiteout-through-link": [
        [T.dir("usr"), T.file("usr/a"), T.symlink("l", "usr")],
        [T.whiteout("l/a")],
    ],
    "hardlink-through-link": [
        [T.dir("usr"), T.file("usr/a", b"a"), T.symlink("l", "/usr")],
        [T.hardlink("h", "l/a")],
    ],
    "opaque-first": [[T.dir("d"), T.file("d/old")], [T.opaque("d"), T.dir("d"), T.file("d/new")]],
    "file-over-dir": [[T.dir("d"), T.file("d/old")], [T.file("d", b"f")]],
    "dir-over-symlink": [
        [T.dir("t"), T.symlink("d", "t")],
        [T.dir("d", mode=0o700), T.file("d/x")],
    ],
    "hardlink-chain": [[T.file("a", b"a")], [T.hardlink("b", "a"), T.hardlink("c", "b")]],
    "whiteout-then-recreate": [
        [T.dir("d"), T.file("d/x")],
        [T.whiteout("d"), T.dir("d"), T.file("d/y")],
    ],
}


@pytest.mark.parametrize("case", sorted(UMOCI_CASES))
def test_flat_matches_umoci(tmp_path: Path, case: str) -> None:
    tars = [tar_bytes(layer) for layer in UMOCI_CASES[case]]
    build_image(tmp_path / "layout", tars, tag="t", compression="gzip")
    subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{tmp_path / 'layout'}:t", str(tmp_path / "umoci")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    ours = tmp_path / "ours"
    ours.mkdir()
    unpack_flat([blob_args(tar, "gzip") for tar in tars], ours)
    assert_trees_equal(tmp_path / "umoci", ours, intended=INTENDED_FLAT_DIFFERENCES)


def _read_all(blob: bytes, compression: str) -> bytes:
    with open_layer(io.BytesIO(blob), LAYER_MEDIA_TYPES[compression], name="cut") as stream:
        return b"".join(iter(lambda: stream.read(1 << 16), b""))


@pytest.mark.parametrize("checksum", [True, False])
@pytest.mark.parametrize("content_size", [True, False])
def test_zstd_frames_skippable_frames_and_every_truncation(
    checksum: bool, content_size: bool
) -> None:
    data = os.urandom(20_000) + b"z" * 300_000
    compressor = zstandard.ZstdCompressor(write_checksum=checksum, write_content_size=content_size)
    skippable = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"hello"
    first = compressor.compress(data[:1000])
    blob = first + skippable + compressor.compress(data[1000:])
    assert _read_all(blob, "zstd") == data
    # A cut between frames leaves a valid, shorter stream: only the diff_id can tell.
    boundaries = {len(first), len(first) + len(skippable)}
    for cut in {*range(1, 40), *range(40, len(blob), 97)} - boundaries:
        with pytest.raises(LayerError, match="layer cut: "):
            _read_all(blob[:cut], "zstd")
    with pytest.raises(LayerError, match="data after the end of the zstd stream"):
        _read_all(blob + b"garbage!", "zstd")


def test_gzip_every_truncation_is_an_error() -> None:
    data = os.urandom(20_000) + b"g" * 200_000
    first = gzip.compress(data[:5000])
    blob = first + gzip.compress(data[5000:])
    assert _read_all(blob, "gzip") == data
    for cut in {*range(1, 40), *range(40, len(blob), 61)} - {len(first)}:
        with pytest.raises(LayerError, match="layer cut: "):
            _read_all(blob[:cut], "gzip")
    with pytest.raises(LayerError, match="data after the end of the gzip stream"):
        _read_all(blob + b"garbage!", "gzip")
