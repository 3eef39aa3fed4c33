"""The unprivileged code paths, run for real as uid 65534, against what root gets.

``unpriv_apply.py`` drops to 65534 (no capabilities) before applying; the
test, as root, then inspects the tree. Documented differences: no owners
(counted in ``owners_not_applied``), no device nodes (listed in ``skipped``,
and the layer still removes what lower layers had there), fifos created,
``trusted.*`` xattrs give a warning, and LAYERFS keeps ``.wh.`` files with
``whiteouts="wh-files"``.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.oci import TarEntry, tar_bytes
from unpacked.layers import Target, apply_layer

T = TarEntry
NOBODY = 65534
HELPER = Path(__file__).with_name("unpriv_apply.py")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become uid 65534")


def owned_dir(path: Path) -> Path:
    path.mkdir()
    os.chown(path, NOBODY, NOBODY)
    return path


def apply_as_nobody(
    workspace: Path, entries: list[TarEntry], root: Path, target: Target, lower: Path | None = None
) -> dict[str, Any]:
    tar = workspace / "layer.tar"
    tar.write_bytes(tar_bytes(entries))
    args = [sys.executable, str(HELPER), str(tar), str(root), target.value]
    if lower is not None:
        args.append(str(lower))
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


FLAT_LAYER = [
    T.dir("etc", mode=0o555),
    T.file("etc/root-owned", b"r", uid=0, gid=0),
    T.file("etc/nobody-owned", b"n", uid=NOBODY, gid=NOBODY),
    T.file("suid", b"s", mode=0o4755, uid=NOBODY, gid=NOBODY),
    T.file("secret", b"000", mode=0o000, uid=NOBODY, gid=NOBODY),
    T.char("null", 1, 3, mode=0o666),
    T.block("sda", 8, 0),
    T.fifo("pipe", mode=0o640, uid=NOBODY, gid=NOBODY),
    T.symlink("link", "/etc/passwd", uid=NOBODY, gid=NOBODY),
    T.file("tagged", b"", uid=NOBODY, gid=NOBODY, xattrs={"user.ok": b"1", "trusted.no": b"2"}),
    T.file("ro-tagged", b"", mode=0o444, uid=NOBODY, gid=NOBODY, xattrs={"user.ro": b"1"}),
    T.hardlink("etc/again", "etc/nobody-owned"),
]


def test_flat_unprivileged_differs_only_as_documented(workspace: Path) -> None:
    root = owned_dir(workspace / "root")
    report = apply_as_nobody(workspace, FLAT_LAYER, root, Target.FLAT)
    assert "error" not in report, report
    assert report["entries"] == len(FLAT_LAYER)
    assert sorted(map(tuple, report["skipped"])) == [
        ("null", "device node: not permitted (unprivileged)"),
        ("sda", "device node: not permitted (unprivileged)"),
    ]
    # etc and etc/root-owned are uid 0; the skipped devices never get as far as owners.
    assert report["owners_not_applied"] == 2
    assert report["whiteouts"] == "resolved"
    assert any("trusted.* xattrs not permitted" in w for w in report["warnings"])
    assert not (root / "null").exists() and not (root / "sda").exists()
    assert stat.S_ISFIFO(os.lstat(root / "pipe").st_mode)
    for path in root.rglob("*"):
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY), path
    assert stat.S_IMODE((root / "suid").stat().st_mode) == 0o4755
    assert stat.S_IMODE((root / "etc").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "secret").stat().st_mode) == 0o400
    assert os.getxattr(root / "tagged", "user.ok") == b"1"
    assert os.getxattr(root / "ro-tagged", "user.ro") == b"1"
    assert "trusted.no" not in os.listxattr(root / "tagged")
    assert (root / "etc/again").stat().st_ino == (root / "etc/nobody-owned").stat().st_ino
    assert os.readlink(root / "link") == "/etc/passwd"


def test_root_gets_what_nobody_could_not(tmp_path: Path) -> None:
    report = apply_layer(io.BytesIO(tar_bytes(FLAT_LAYER)), tmp_path, target=Target.FLAT)
    assert report.skipped == () and report.owners_not_applied == 0
    assert stat.S_ISCHR(os.lstat(tmp_path / "null").st_mode)
    assert os.lstat(tmp_path / "etc/root-owned").st_uid == 0
    assert os.getxattr(tmp_path / "tagged", "trusted.no") == b"2"


def test_unprivileged_device_still_replaces_lower_entry(workspace: Path) -> None:
    root = owned_dir(workspace / "root")
    first = apply_as_nobody(workspace, [T.file("dev-or-file", b"lower")], root, Target.FLAT)
    assert "error" not in first
    second = apply_as_nobody(workspace, [T.char("dev-or-file", 1, 3)], root, Target.FLAT)
    assert [tuple(s) for s in second["skipped"]] == [
        ("dev-or-file", "device node: not permitted (unprivileged)")
    ]
    assert not (root / "dev-or-file").exists()


def test_flat_whiteouts_work_unprivileged(workspace: Path) -> None:
    root = owned_dir(workspace / "root")
    apply_as_nobody(
        workspace,
        [T.dir("d", mode=0o555), T.file("d/a"), T.file("d/b"), T.file("x")],
        root,
        Target.FLAT,
    )
    report = apply_as_nobody(
        workspace, [T.whiteout("d/a"), T.opaque("."), T.file("d/c")], root, Target.FLAT
    )
    assert "error" not in report, report
    assert sorted(os.listdir(root)) == ["d"]
    assert sorted(os.listdir(root / "d")) == ["c"]


def test_layerfs_unprivileged_keeps_whiteout_files(workspace: Path) -> None:
    lower = owned_dir(workspace / "lower")
    apply_as_nobody(workspace, [T.dir("d"), T.file("d/lowfile", b"low")], lower, Target.FLAT)
    root = owned_dir(workspace / "layer")
    entries = [
        T.dir("d"),
        T.whiteout("d/gone"),
        T.opaque("d"),
        T.hardlink("d/copy", "d/lowfile"),
        T.char("d/dev", 1, 3),
    ]
    report = apply_as_nobody(workspace, entries, root, Target.LAYERFS, lower)
    assert "error" not in report, report
    assert report["whiteouts"] == "wh-files"
    assert sorted(os.listdir(root / "d")) == [".wh..wh..opq", ".wh.gone", "copy"]
    assert stat.S_ISREG(os.lstat(root / "d/.wh.gone").st_mode)
    assert (root / "d/copy").read_bytes() == b"low"
    assert "trusted.overlay.opaque" not in os.listxattr(root / "d")
    assert [tuple(s) for s in report["skipped"]] == [
        ("d/dev", "device node: not permitted (unprivileged)")
    ]


def test_layerfs_as_root_uses_overlay_form(tmp_path: Path) -> None:
    entries = [T.dir("d"), T.whiteout("d/gone"), T.opaque("d")]
    report = apply_layer(io.BytesIO(tar_bytes(entries)), tmp_path, target=Target.LAYERFS)
    assert report.whiteouts == "overlay" and report.warnings == ()
    assert stat.S_ISCHR(os.lstat(tmp_path / "d/gone").st_mode)
    assert os.getxattr(tmp_path / "d", "trusted.overlay.opaque") == b"y"


def test_helper_really_runs_without_privileges(workspace: Path) -> None:
    # A device node is the simplest thing only privilege can create: if the
    # helper kept root, it would be there.
    root = owned_dir(workspace / "root")
    report = apply_as_nobody(workspace, [T.char("probe", 1, 3)], root, Target.FLAT)
    assert report["skipped"] and not (root / "probe").exists()
