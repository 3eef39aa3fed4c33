"""The tree comparator finds every kind of difference (a comparator that cannot fail is useless)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from support.oci import FIXED_MTIME, TarEntry, tar_bytes
from support.tree import (
    INTENDED_FLAT_DIFFERENCES,
    OVERLAY_OPAQUE_XATTR,
    Difference,
    Kind,
    Node,
    assert_trees_equal,
    compare,
    layer_snapshot,
    snapshot,
)

NON_UTF8 = b"caf\xe9"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="devices and chown need root")


def build(root: Path) -> Path:
    """A tree with one path of every type and most metadata worth comparing."""
    root.mkdir()
    (root / "dir").mkdir(mode=0o755)
    (root / "dir" / "file").write_bytes(b"content")
    (root / "empty").write_bytes(b"")
    os.link(root / "dir" / "file", root / "hardlink")
    os.symlink("dir/file", root / "symlink")
    os.symlink("/outside/of/the/tree", root / "escape")
    os.mkfifo(root / "fifo")
    os.mknod(root / "char", 0o600 | 0o020000, os.makedev(1, 3))
    os.mknod(root / "block", 0o600 | 0o060000, os.makedev(7, 0))
    # chown before chmod: the kernel drops setuid on chown.
    os.chown(root / "empty", 1000, 1001)
    os.chmod(root / "empty", 0o4755)
    os.setxattr(root / "dir" / "file", "user.note", b"\x00\xff")
    (root / os.fsdecode(NON_UTF8)).write_bytes(b"latin-1 name")
    for directory, names, files in os.walk(root, topdown=False):
        for name in [*names, *files, "."]:
            os.utime(os.path.join(directory, name), ns=(0, 10**18), follow_symlinks=False)
    return root


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    if os.geteuid() != 0:
        pytest.skip("devices and chown need root")
    # Built twice rather than copied: copies lose hard links and owners.
    return build(tmp_path / "left"), build(tmp_path / "right")


def only(differences: list[Difference]) -> Difference:
    assert len(differences) == 1, differences
    return differences[0]


def test_identical_trees_have_no_differences(pair: tuple[Path, Path]) -> None:
    left, right = pair
    assert compare(snapshot(left), snapshot(right)) == []
    assert_trees_equal(left, right)


def test_snapshot_records_every_type_without_following_symlinks(pair: tuple[Path, Path]) -> None:
    nodes = snapshot(pair[0])
    kinds = {path: node.kind for path, node in nodes.items()}
    assert kinds[b"."] is Kind.DIR
    assert kinds[b"dir/file"] is Kind.FILE
    assert kinds[b"symlink"] is Kind.SYMLINK
    assert kinds[b"fifo"] is Kind.FIFO
    assert (kinds[b"char"], nodes[b"char"].rdev) == (Kind.CHAR, (1, 3))
    assert (kinds[b"block"], nodes[b"block"].rdev) == (Kind.BLOCK, (7, 0))
    assert nodes[b"escape"].link_target == b"/outside/of/the/tree"
    assert nodes[b"dir/file"].hardlinks == (b"dir/file", b"hardlink")
    assert nodes[b"empty"].hardlinks == ()
    assert nodes[b"empty"].mode == 0o4755
    assert (nodes[b"empty"].uid, nodes[b"empty"].gid) == (1000, 1001)
    assert nodes[b"dir/file"].xattr("user.note") == b"\x00\xff"
    assert nodes[NON_UTF8].size == len(b"latin-1 name")


@pytest.mark.parametrize(
    ("change", "path", "field"),
    [
        (lambda r: os.chmod(r / "dir" / "file", 0o600), b"hardlink", "mode"),
        (lambda r: os.chmod(r / "empty", 0o755), b"empty", "mode"),
        (lambda r: os.chown(r / "empty", 1000, 0), b"empty", "gid"),
        (lambda r: os.chown(r / "empty", 0, 1001), b"empty", "uid"),
        (lambda r: os.lchown(r / "symlink", 5, 0), b"symlink", "uid"),
        (lambda r: (r / "empty").write_bytes(b"x"), b"empty", "size"),
        (lambda r: os.setxattr(r / "dir", "user.new", b"1"), b"dir", "xattrs"),
        (lambda r: os.removexattr(r / "dir" / "file", "user.note"), b"hardlink", "xattrs"),
        (lambda r: os.setxattr(r / "fifo", "trusted.t", b"2"), b"fifo", "xattrs"),
    ],
    ids=[
        "mode",
        "setuid",
        "gid",
        "uid",
        "symlink-owner",
        "size",
        "xattr-added",
        "xattr-gone",
        "trusted-xattr",
    ],
)
def test_each_metadata_field_is_compared(
    pair: tuple[Path, Path], change: object, path: bytes, field: str
) -> None:
    left, right = pair
    assert callable(change)
    change(right)
    differences = compare(snapshot(left), snapshot(right))
    assert {(d.path, d.field) for d in differences} >= {(path, field)}
    # A hard-linked file differs under both of its names, and nothing else differs.
    assert {d.path for d in differences} == ({path, b"dir/file"} if path == b"hardlink" else {path})


def test_same_size_different_content(pair: tuple[Path, Path]) -> None:
    left, right = pair
    (right / os.fsdecode(NON_UTF8)).write_bytes(b"latin-2 name")
    difference = only(compare(snapshot(left), snapshot(right)))
    assert (difference.path, difference.field) == (NON_UTF8, "sha256")
    assert "caf\\xe9: sha256" in str(difference)


def test_link_target_and_device_numbers(pair: tuple[Path, Path]) -> None:
    left, right = pair
    os.unlink(right / "symlink")
    os.symlink("dir/file/", right / "symlink")
    os.unlink(right / "char")
    os.mknod(right / "char", 0o600 | 0o020000, os.makedev(1, 5))
    found = {(d.path, d.field) for d in compare(snapshot(left), snapshot(right))}
    assert found == {(b"symlink", "link_target"), (b"char", "rdev")}


def test_type_change_reports_only_the_type(pair: tuple[Path, Path]) -> None:
    left, right = pair
    os.unlink(right / "fifo")
    (right / "fifo").mkdir()
    difference = only(compare(snapshot(left), snapshot(right)))
    assert (difference.field, difference.expected, difference.actual) == (
        "kind",
        Kind.FIFO,
        Kind.DIR,
    )


def test_missing_and_extra_paths(pair: tuple[Path, Path]) -> None:
    left, right = pair
    shutil.rmtree(right / "dir")
    (right / "extra").write_bytes(b"")
    found = {
        (d.path, d.field, d.expected, d.actual) for d in compare(snapshot(left), snapshot(right))
    }
    assert (b"dir", "presence", True, False) in found
    assert (b"dir/file", "presence", True, False) in found
    assert (b"extra", "presence", False, True) in found
    # The surviving name of the former hard link pair is now alone.
    assert (b"hardlink", "hardlinks", (b"dir/file", b"hardlink"), ()) in found


def test_hard_link_versus_copy(pair: tuple[Path, Path]) -> None:
    left, right = pair
    os.unlink(right / "hardlink")
    shutil.copy2(right / "dir" / "file", right / "hardlink")
    found = {(d.path, d.field) for d in compare(snapshot(left), snapshot(right))}
    assert found == {(b"hardlink", "hardlinks"), (b"dir/file", "hardlinks")}


def test_mtimes_only_when_asked(pair: tuple[Path, Path]) -> None:
    left, right = pair
    os.utime(right / "empty", ns=(0, 123_456_789))
    assert compare(snapshot(left), snapshot(right)) == []
    difference = only(compare(snapshot(left, mtimes=True), snapshot(right, mtimes=True)))
    assert (difference.path, difference.field, difference.actual) == (
        b"empty",
        "mtime",
        123_456_789,
    )


def test_owner_access_fix_is_intended_and_nothing_more(pair: tuple[Path, Path]) -> None:
    left, right = pair
    os.chmod(left / "dir", 0o055)
    os.chmod(left / "empty", 0o4055)
    os.chmod(right / "dir", 0o755)
    os.chmod(right / "empty", 0o4455)
    fixed = compare(snapshot(left), snapshot(right), intended=INTENDED_FLAT_DIFFERENCES)
    assert fixed == []
    # More than u+r on a file, a lost setuid bit, or a fix on a fifo is not the intended fix.
    os.chmod(right / "empty", 0o4755)
    os.chmod(right / os.fsdecode(NON_UTF8), 0o600)
    os.chmod(right / "fifo", 0o744)
    os.chmod(left / "fifo", 0o044)
    found = {
        d.path for d in compare(snapshot(left), snapshot(right), intended=INTENDED_FLAT_DIFFERENCES)
    }
    assert found == {b"empty", NON_UTF8, b"fifo"}


def test_assert_trees_equal_message_names_path_field_and_values(pair: tuple[Path, Path]) -> None:
    left, right = pair
    os.chmod(right / "dir", 0o700)
    for index in range(5):
        (right / f"extra{index}").write_bytes(b"")
    with pytest.raises(AssertionError) as failure:
        assert_trees_equal(left, right, limit=3)
    message = str(failure.value)
    assert message.startswith("6 difference(s)")
    assert "dir: mode: expected 0o755, got 0o700" in message
    assert "extra0: presence: expected absent, got present" in message
    assert "... and 3 more" in message


@needs_root
def test_layer_snapshot_models_overlay_lower_dirs() -> None:
    lower = {
        b".": Node(Kind.DIR, 0o755),
        b"opt": Node(Kind.DIR, 0o750, uid=7, gid=8),
        b"opt/old": Node(Kind.FILE, 0o644, size=3, sha256="aa"),
        b"bin": Node(Kind.DIR, 0o755),
        b"bin/tool": Node(Kind.FILE, 0o4711, size=4, sha256="bb"),
    }
    layer = tar_bytes(
        [
            TarEntry.file("opt/new", b"new"),
            TarEntry.whiteout("opt/old"),
            TarEntry.hardlink("opt/tool", "bin/tool"),
            TarEntry.hardlink("opt/tool2", "opt/tool"),
            TarEntry.opaque("etc"),
            TarEntry.dir("etc", mode=0o700),
            TarEntry.dir("gone"),
            TarEntry.file("gone/child"),
            TarEntry.symlink("gone", "elsewhere"),
        ]
    )
    nodes = layer_snapshot(layer, lower=lower)
    assert nodes[b"opt"] == lower[b"opt"]
    assert nodes[b"opt/old"] == Node(Kind.CHAR, 0, rdev=(0, 0), mtime=FIXED_MTIME * 10**9)
    assert nodes[b"opt"].mtime is None, "an implicit directory has no time of its own"
    tool = nodes[b"opt/tool"]
    assert (tool.mode, tool.sha256, tool.hardlinks) == (0o4711, "bb", (b"opt/tool", b"opt/tool2"))
    assert b"bin/tool" not in nodes
    assert nodes[b"etc"].mode == 0o700
    assert nodes[b"etc"].xattr(OVERLAY_OPAQUE_XATTR) == b"y"
    assert nodes[b"gone"].kind is Kind.SYMLINK
    assert b"gone/child" not in nodes
    assert sorted(nodes) == sorted(
        [b".", b"opt", b"opt/new", b"opt/old", b"opt/tool", b"opt/tool2", b"etc", b"gone"]
    )


def test_layer_snapshot_rejects_hard_link_to_nothing() -> None:
    with pytest.raises(ValueError, match="hard link dangling to missing"):
        layer_snapshot(tar_bytes([TarEntry.hardlink("dangling", "missing")]))


def test_layer_snapshot_copies_each_link_to_a_lower_file_separately() -> None:
    lower = {b".": Node(Kind.DIR, 0o755), b"a": Node(Kind.FILE, 0o600, size=1, sha256="aa")}
    layer = tar_bytes(
        [TarEntry.hardlink("b", "a"), TarEntry.hardlink("c", "a"), TarEntry.hardlink("d", "c")]
    )
    nodes = layer_snapshot(layer, lower=lower)
    assert nodes[b"b"].hardlinks == ()
    assert nodes[b"c"].hardlinks == nodes[b"d"].hardlinks == (b"c", b"d")
    assert nodes[b"b"].sha256 == nodes[b"c"].sha256 == "aa"


def test_layer_snapshot_spells_out_an_opaque_root() -> None:
    lower = {
        b".": Node(Kind.DIR, 0o755),
        b"etc": Node(Kind.DIR, 0o755),
        b"etc/passwd": Node(Kind.FILE, 0o644, size=1, sha256="aa"),
        b"top": Node(Kind.FILE, 0o644, size=1, sha256="bb"),
        b"kept": Node(Kind.FILE, 0o644, size=1, sha256="cc"),
    }
    layer = tar_bytes(
        [
            TarEntry.file("etc/group", mtime=5),
            TarEntry.file(".wh..wh..opq"),
            TarEntry.file("kept", b"new", pax={"mtime": "6.25"}),
        ]
    )
    nodes = layer_snapshot(layer, lower=lower)
    assert nodes[b"top"] == Node(Kind.CHAR, 0, rdev=(0, 0))
    assert nodes[b"etc"].xattr(OVERLAY_OPAQUE_XATTR) == b"y"
    assert nodes[b"kept"].kind is Kind.FILE
    assert nodes[b"kept"].mtime == 6_250_000_000
    assert nodes[b"etc/group"].mtime == 5 * 10**9
    assert b"etc/passwd" not in nodes


def test_only_times_umoci_made_up_are_excused() -> None:
    now = time.time_ns()
    image_time = FIXED_MTIME * 10**9
    cases = {
        (0, now): True,  # the root without a './' entry: umoci says 1970
        (now, image_time): True,  # umoci left the unpacking time, we restored the entry's
        (now, now + 1): True,  # a missing parent: both made one up
        (image_time, now): False,  # we lost a time the image has
        (image_time, image_time + 10**9): False,
    }
    for (expected_time, actual_time), excused in cases.items():
        expected = {b".": Node(Kind.DIR, 0o755, mtime=expected_time)}
        actual = {b".": Node(Kind.DIR, 0o755, mtime=actual_time)}
        found = compare(expected, actual, intended=INTENDED_FLAT_DIFFERENCES)
        assert (found == []) is excused, (expected_time, actual_time)
    # Never for files: their time always comes from the image.
    file_now = {b"f": Node(Kind.FILE, 0o644, mtime=now)}
    file_then = {b"f": Node(Kind.FILE, 0o644, mtime=image_time)}
    assert compare(file_now, file_then, intended=INTENDED_FLAT_DIFFERENCES) != []
