"""Hostile layers: every escape attempt named, each with proof that nothing outside changed.

Each test applies a crafted layer to ``<tmp>/a/b/root`` and checks, besides its
own outcome (a ``LayerError``/``UnsafeLayerError`` naming the entry, or a
documented safe result inside the root), that the sentinel tree around the root
(``<tmp>/sentinel``, ``<tmp>/a``, ``<tmp>/a/b``) and the host's ``/etc/passwd``
and ``/etc/shadow`` are exactly as before: same entries, content, modes, owners,
link counts and mtimes.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.oci import TarEntry, tar_bytes
from support.tree import snapshot
from unpacked.digest import Digest
from unpacked.errors import LayerError, UnsafeLayerError, VerificationError
from unpacked.layers import ApplyReport, Target, apply_layer, unpack_layer

T = TarEntry

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layer tests run as root")

HOST_FILES = ("/etc/passwd", "/etc/shadow")


@dataclass(frozen=True)
class Arena:
    base: Path
    root: Path

    def state(self) -> tuple[object, ...]:
        tree = {
            path: node
            for path, node in snapshot(self.base, mtimes=True).items()
            if not (path == b"a/b/root" or path.startswith(b"a/b/root/"))
        }
        host = []
        for name in HOST_FILES:
            if os.path.exists(name):
                st = os.lstat(name)
                host.append((name, st.st_ino, st.st_nlink, st.st_size, st.st_mtime_ns, st.st_mode))
        return tree, tuple(host)

    @contextmanager
    def unchanged(self) -> Iterator[None]:
        before = self.state()
        yield
        assert self.state() == before, "something outside the root changed"

    def apply(
        self, *layers: Sequence[TarEntry] | bytes, target: Target = Target.FLAT
    ) -> list[ApplyReport]:
        reports = []
        for number, layer in enumerate(layers):
            data = layer if isinstance(layer, bytes) else tar_bytes(layer)
            reports.append(
                apply_layer(io.BytesIO(data), self.root, target=target, name=f"h{number}")
            )
        return reports


@pytest.fixture
def arena(tmp_path: Path) -> Arena:
    sentinel = tmp_path / "sentinel"
    (sentinel / "dir").mkdir(parents=True)
    (sentinel / "secret").write_text("do not touch")
    (sentinel / "dir" / "inner").write_text("inner")
    os.symlink("secret", sentinel / "link")
    root = tmp_path / "a" / "b" / "root"
    root.mkdir(parents=True)
    (tmp_path / "a" / "passwd").write_text("outside a")
    (tmp_path / "a" / "b" / "shadow").write_text("outside b")
    (tmp_path / "a" / "b" / "escaped").mkdir()
    return Arena(tmp_path, root)


def files_in(root: Path) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, n), root)
        for d, dirs, files in os.walk(root)
        for n in dirs + files
    )


# --- names ------------------------------------------------------------------------------


def test_dotdot_name_is_rejected(arena: Arena) -> None:
    with (
        arena.unchanged(),
        pytest.raises(UnsafeLayerError, match=r"layer h0: entry '../escaped/x'"),
    ):
        arena.apply([T.file("../escaped/x", b"out")])
    assert not (arena.base / "a/b/escaped/x").exists()


def test_dotdot_inside_a_name_that_climbs_out_is_rejected(arena: Arena) -> None:
    with arena.unchanged(), pytest.raises(UnsafeLayerError, match="climbs out of the root"):
        arena.apply([T.dir("d"), T.file("d/../../shadow", b"out")])


def test_dotdot_that_stays_inside_is_normalised(arena: Arena) -> None:
    with arena.unchanged():
        arena.apply([T.dir("d"), T.file("d/../inside", b"in")])
    assert (arena.root / "inside").read_bytes() == b"in"


def test_absolute_names_land_under_the_root(arena: Arena) -> None:
    sentinel_secret = str(arena.base / "sentinel" / "secret")
    with arena.unchanged():
        arena.apply([T.file("/etc/passwd", b"image passwd"), T.file(sentinel_secret, b"mine")])
    assert (arena.root / "etc/passwd").read_bytes() == b"image passwd"
    assert (arena.root / sentinel_secret.lstrip("/")).read_bytes() == b"mine"


def test_entry_named_dot_or_empty(arena: Arena) -> None:
    with arena.unchanged():
        arena.apply([T.dir(".", mode=0o711), T.dir("", mode=0o750)])
    assert arena.root.stat().st_mode & 0o777 == 0o750
    with arena.unchanged(), pytest.raises(UnsafeLayerError, match="would replace the root"):
        arena.apply([T.file(".", b"not a directory")])
    with arena.unchanged(), pytest.raises(UnsafeLayerError, match="would replace the root"):
        arena.apply([T.symlink("./", "/")])


def test_names_longer_than_path_max_are_rejected(arena: Arena) -> None:
    long_name = "/".join(["x" * 200] * 25)
    with arena.unchanged(), pytest.raises(LayerError, match="exceeds PATH_MAX"):
        arena.apply([T.file(long_name, b"deep")])
    with arena.unchanged(), pytest.raises(LayerError, match=r"entry 'y{300}'"):
        arena.apply([T.file("y" * 300, b"component too long")])


def test_deep_nesting_is_created_and_removed_inside(arena: Arena) -> None:
    deep = "/".join(["n"] * 1500)  # 2999 bytes: deeper than any sane image
    with arena.unchanged():
        arena.apply([T.file(f"{deep}/leaf", b"bottom")], [T.whiteout("n")])
    assert files_in(arena.root) == []


# --- symlinks in parent components -------------------------------------------------------


def test_file_through_symlink_to_slash_stays_inside(arena: Arena) -> None:
    with arena.unchanged():
        arena.apply([T.symlink("s", "/"), T.file("s/escaped", b"x"), T.file("s/a/passwd", b"y")])
    assert (arena.root / "escaped").read_bytes() == b"x"
    assert (arena.root / "a/passwd").read_bytes() == b"y"


def test_file_through_symlink_to_dotdots_stays_inside(arena: Arena) -> None:
    with arena.unchanged():
        arena.apply([T.symlink("s", "../../.."), T.file("s/shadow", b"x")])
    assert (arena.root / "shadow").read_bytes() == b"x"


def test_file_through_symlink_to_an_absolute_outside_path(arena: Arena) -> None:
    target = str(arena.base / "sentinel")
    with arena.unchanged():
        arena.apply([T.symlink("s", target)], [T.file("s/secret", b"overwrite?")])
    assert (arena.root / target.lstrip("/") / "secret").read_bytes() == b"overwrite?"


def test_chained_symlinks_stay_inside(arena: Arena) -> None:
    with arena.unchanged():
        arena.apply(
            [
                T.symlink("one", "two/../../.."),
                T.symlink("two", "/three"),
                T.symlink("three", "../.."),
                T.file("one/escaped", b"x"),
            ]
        )
    assert (arena.root / "escaped").read_bytes() == b"x"


def test_symlink_loop_is_an_error(arena: Arena) -> None:
    with arena.unchanged(), pytest.raises(LayerError, match="too many levels of symbolic links"):
        arena.apply([T.symlink("a", "b"), T.symlink("b", "a"), T.file("a/x")])


def test_symlink_swapped_for_a_directory_within_one_layer(arena: Arena) -> None:
    outside = str(arena.base / "sentinel")
    with arena.unchanged():
        arena.apply(
            [
                T.dir("d"),
                T.file("d/first"),
                T.symlink("d", outside),
                T.file("d/second", b"2"),
                T.dir("d"),
                T.file("d/third", b"3"),
            ]
        )
    assert files_in(arena.root / "d") == ["third"]
    assert (arena.root / outside.lstrip("/") / "second").read_bytes() == b"2"


def test_last_component_symlink_is_replaced_not_followed(arena: Arena) -> None:
    secret = str(arena.base / "sentinel" / "secret")
    with arena.unchanged():
        arena.apply(
            [
                T.symlink("f", secret),
                T.symlink("d", str(arena.base / "sentinel")),
                T.symlink("up", "../shadow"),
            ],
            [
                T.file("f", b"replaced"),
                T.dir("d"),
                T.file("up", b"also replaced"),
                T.char("f2", 1, 3),
                T.symlink("f3", secret),
                T.fifo("f3"),
            ],
        )
    assert (arena.root / "f").read_bytes() == b"replaced"
    assert (arena.root / "d").is_dir() and not (arena.root / "d").is_symlink()


def test_parent_that_is_a_file_is_an_error(arena: Arena) -> None:
    with arena.unchanged(), pytest.raises(LayerError, match="'f' is not a directory"):
        arena.apply([T.file("f"), T.file("f/x")])


def test_file_then_directory_of_the_same_name(arena: Arena) -> None:
    with arena.unchanged():
        arena.apply([T.file("same", b"file"), T.dir("same"), T.file("same/child", b"c")])
    assert files_in(arena.root) == ["same", "same/child"]


# --- hard links ------------------------------------------------------------------------


def test_hard_link_to_an_absolute_host_file(arena: Arena) -> None:
    with arena.unchanged(), pytest.raises(LayerError, match=r"'/etc/shadow': target not found"):
        arena.apply([T.hardlink("stolen", "/etc/shadow")])


def test_hard_link_climbing_out_is_rejected(arena: Arena) -> None:
    with arena.unchanged(), pytest.raises(UnsafeLayerError, match="hard link target"):
        arena.apply([T.hardlink("stolen", "../../etc/passwd")])


def test_hard_link_through_a_symlinked_parent_stays_inside(arena: Arena) -> None:
    with arena.unchanged(), pytest.raises(LayerError, match="target not found"):
        arena.apply([T.symlink("s", "../../.."), T.hardlink("h", "s/a/passwd")])
    with arena.unchanged():
        arena.apply([T.file("inside", b"i"), T.symlink("up", "/.."), T.hardlink("h", "up/inside")])
    assert os.lstat(arena.root / "h").st_ino == os.lstat(arena.root / "inside").st_ino


def test_hard_link_to_a_symlink_pointing_outside(arena: Arena) -> None:
    secret = arena.base / "sentinel" / "secret"
    with arena.unchanged():
        arena.apply(
            [T.symlink("s", str(secret)), T.hardlink("h", "s")],
            [T.file("h", b"write through the link?")],
        )
    assert os.readlink(arena.root / "s") == str(secret)
    assert (arena.root / "h").read_bytes() == b"write through the link?"


def test_hard_link_to_a_directory_is_an_error(arena: Arena) -> None:
    with arena.unchanged(), pytest.raises(LayerError, match="hard link 'h'"):
        arena.apply([T.dir("d"), T.hardlink("h", "d")])


def test_layerfs_hard_link_copy_from_lower_cannot_climb_out(arena: Arena) -> None:
    lower = arena.base / "a" / "b"  # the "lower tree" has a shadow file one level up
    layer = io.BytesIO(tar_bytes([T.hardlink("h", "../shadow")]))
    with arena.unchanged(), pytest.raises(UnsafeLayerError, match="hard link target"):
        apply_layer(layer, arena.root, target=Target.LAYERFS, lower=lower, name="lfs")
    layer = io.BytesIO(tar_bytes([T.hardlink("h", "/shadow")]))
    with arena.unchanged():
        apply_layer(layer, arena.root, target=Target.LAYERFS, lower=lower, name="lfs")
    # Resolved in the lower root: a copy of <lower>/shadow.
    assert (arena.root / "h").read_text() == "outside b"


# --- whiteouts ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", [".wh...", ".wh..", ".wh.", "d/.wh..."])
def test_whiteouts_naming_no_file_are_rejected(arena: Arena, name: str) -> None:
    with arena.unchanged(), pytest.raises(UnsafeLayerError, match="names no file"):
        arena.apply([T.dir("d"), T.file("d/x")], [T.file(name)])
    assert files_in(arena.root) == ["d", "d/x"]


def test_whiteout_climbing_out_is_rejected(arena: Arena) -> None:
    with arena.unchanged(), pytest.raises(UnsafeLayerError, match="climbs out"):
        arena.apply([T.file("../.wh.shadow")])


def test_whiteout_through_a_symlinked_parent_stays_inside(arena: Arena) -> None:
    with arena.unchanged():
        arena.apply(
            [
                T.dir("a"),
                T.file("a/passwd", b"image"),
                T.symlink("s", "../../.."),
                T.symlink("abs", str(arena.base / "sentinel")),
            ],
            [T.file("s/a/.wh.passwd"), T.file("abs/.wh.secret"), T.file("abs/.wh..wh..opq")],
        )
    assert not (arena.root / "a/passwd").exists()


def test_opaque_marker_through_a_symlink_to_slash(arena: Arena) -> None:
    with arena.unchanged():
        arena.apply(
            [T.file("kept"), T.symlink("s", "/")], [T.file("s/.wh..wh..opq"), T.file("new")]
        )
    assert files_in(arena.root) == ["new"]


def test_layerfs_whiteouts_through_symlinks_stay_inside(arena: Arena) -> None:
    with arena.unchanged():
        arena.apply(
            [T.symlink("s", "../../.."), T.file("s/.wh.shadow"), T.file("s/sentinel/.wh..wh..opq")],
            target=Target.LAYERFS,
        )
    assert os.path.exists(arena.root / "shadow")


# --- broken streams ----------------------------------------------------------------------


def test_truncated_mid_file_is_an_error(arena: Arena) -> None:
    data = tar_bytes([T.file("big", b"x" * 100_000)])
    with arena.unchanged(), pytest.raises(LayerError, match=r"ends early \(truncated\) in 'big'"):
        arena.apply(data[:50_000])


def test_truncated_mid_header_is_an_error(arena: Arena) -> None:
    data = tar_bytes([T.file("a", b"1"), T.file("b", b"2")])
    with arena.unchanged(), pytest.raises(LayerError, match="corrupt tar header"):
        arena.apply(data[: 2 * 512 + 100])  # inside the header of 'b'


def test_corrupt_header_after_the_first_member_is_an_error(arena: Arena) -> None:
    data = bytearray(tar_bytes([T.file("a", b"1"), T.file("b", b"2")]))
    second = data.index(b"b\0") if b"b\0" in data else 2048
    data[second : second + 100] = b"\xff" * 100
    with arena.unchanged(), pytest.raises(LayerError, match="corrupt tar header"):
        arena.apply(bytes(data))


def test_garbage_after_end_of_archive_is_ignored(arena: Arena) -> None:
    data = tar_bytes([T.file("a", b"1")]) + os.urandom(5000)
    with arena.unchanged():
        (report,) = arena.apply(data)
    assert files_in(arena.root) == ["a"]
    assert any("after the end-of-archive" in w for w in report.warnings)


def test_non_tar_stream_is_an_error(arena: Arena) -> None:
    with arena.unchanged(), pytest.raises(LayerError, match="layer h0: not a tar archive"):
        arena.apply(b"<html>not a layer</html>" * 100)


def test_missing_end_marker_is_accepted_with_a_warning(arena: Arena) -> None:
    data = tar_bytes([T.file("a", b"1")])
    with arena.unchanged():
        (report,) = arena.apply(data[:1024])  # header + data block, no zero blocks
    assert any("no end-of-archive marker" in w for w in report.warnings)


def test_huge_pax_header_is_refused_without_reading_it(arena: Arena) -> None:
    info = tarfile.TarInfo("x")
    header = info.tobuf(tarfile.USTAR_FORMAT)
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type = tarfile.XHDTYPE
    pax.size = 1 << 32
    with arena.unchanged(), pytest.raises(LayerError, match="tar header larger than"):
        arena.apply(pax.tobuf(tarfile.USTAR_FORMAT) + header)


def test_device_nodes_are_created_inside_only(arena: Arena) -> None:
    with arena.unchanged():
        arena.apply([T.symlink("dev", "/d"), T.char("dev/null", 1, 3), T.block("dev/sda", 8, 0)])
    assert os.path.exists(arena.root / "d/null") and os.path.islink(arena.root / "dev")
    with arena.unchanged(), pytest.raises(LayerError, match="too many levels"):
        arena.apply([T.symlink("dev", "/dev"), T.char("dev/null", 1, 3)])


def test_nul_byte_in_a_pax_name_is_an_error(arena: Arena) -> None:
    with arena.unchanged(), pytest.raises(LayerError, match="layer h0: entry 'a"):
        arena.apply([T.file("placeholder", b"x", pax={"path": "a\x00/../../b"})])


def test_missing_root_is_a_layer_error(tmp_path: Path) -> None:
    with pytest.raises(LayerError, match=r"layer gone: .*No such file"):
        apply_layer(io.BytesIO(b""), tmp_path / "missing", target=Target.FLAT, name="gone")


def test_no_fds_or_threads_leak_on_errors(arena: Arena) -> None:
    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before, threads = fds(), threading.active_count()
    for layer in ([T.file("../x")], [T.symlink("a", "a"), T.file("a/b")], [T.hardlink("h", "m")]):
        with pytest.raises(LayerError):
            arena.apply([T.dir("d1"), T.dir("d1/d2"), T.file("d1/d2/f")], layer)
    data = tar_bytes([T.file("big", os.urandom(3 << 20))])
    for cut in (len(data) // 2, len(data)):
        with pytest.raises((LayerError, VerificationError)):
            unpack_layer(
                io.BytesIO(gzip.compress(data[:cut])),
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Digest.of(b"other"),
                arena.root,
                target=Target.FLAT,
                name="leak",
            )
    assert (fds(), threading.active_count()) == (before, threads)
