"""`unpacked verify --deep`: files written through shared inodes are found, named, repaired.

Two images pushed to the real registry share a base layer; their flat trees link its
inodes. Each test works on a copy (``cp -a``, hard links kept) of the converted
repository and writes into it the way a runtime with a writable root would.

    app:1  -> base (etc/os-release, etc/motd, usr/lib/{x,y}, bin/busybox, bin/sh -> busybox)
              + top-a (whites out etc/motd, opaque usr/lib with usr/lib/z, opt/a)
    tool:1 -> base + top-b (bin/sh a file replacing the link, opt/b)
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.corpus import CORPUS
from support.oci import TarEntry, build_image, tar_bytes
from support.registry import RegistryServer
from unpacked import layout
from unpacked.cli import EXIT_FAILURE, EXIT_OK, main
from unpacked.contentindex import Entry, compose, from_bytes, index_tree, to_bytes
from unpacked.convert import convert_image
from unpacked.digest import Digest
from unpacked.publish import open_publisher
from unpacked.reference import parse
from unpacked.registry import RegistryClient, RegistryOptions

PushImage = Callable[..., object]
Json = dict[str, Any]


@dataclass(frozen=True)
class Repo:
    root: Path
    registry: str
    app: Digest
    tool: Digest
    base: Digest
    top_a: Digest
    top_b: Digest

    @property
    def spec(self) -> str:
        return f"dir:{self.root}"

    def name(self, repo_tag: str) -> str:
        return f"{self.registry}/deep/{repo_tag}"

    def flat(self, image: Digest) -> Path:
        return self.root / layout.flat_dir(image)

    def layerfs(self, layer: Digest) -> Path:
        return self.root / layout.layerfs_dir(layer)


@pytest.fixture(scope="module")
def pristine(
    tmp_path_factory: pytest.TempPathFactory, push_image: PushImage, registry: RegistryServer
) -> Repo:
    tmp = tmp_path_factory.mktemp("deep")
    base = tar_bytes(
        [
            TarEntry.dir("etc"),
            TarEntry.file("etc/os-release", b"ID=deep\n"),
            TarEntry.file("etc/motd", b"hello\n"),
            TarEntry.dir("usr"),
            TarEntry.dir("usr/lib"),
            TarEntry.file("usr/lib/x", b"x" * 5000),
            TarEntry.file("usr/lib/y", b"y"),
            TarEntry.dir("bin"),
            TarEntry.file("bin/busybox", b"\x7fELF", mode=0o755),
            TarEntry.symlink("bin/sh", "busybox"),
        ]
    )
    top_a = tar_bytes(
        [
            TarEntry.whiteout("etc/motd"),
            TarEntry.opaque("usr/lib"),
            TarEntry.dir("usr/lib"),
            TarEntry.file("usr/lib/z", b"z"),
            TarEntry.dir("opt"),
            TarEntry.file("opt/a", b"a"),
        ]
    )
    top_b = tar_bytes(
        [
            TarEntry.file("bin/sh", b"#!sh\n", mode=0o755),
            TarEntry.dir("opt"),
            TarEntry.file("opt/b"),
        ]
    )
    app = build_image(tmp / "app", [base, top_a])
    tool = build_image(tmp / "tool", [base, top_b])
    push_image(app, "deep/app:1")
    push_image(tool, "deep/tool:1")
    publisher = open_publisher(f"dir:{tmp / 'repo'}")
    with RegistryClient(RegistryOptions()) as client:
        for repo_tag in ("app:1", "tool:1"):
            reference = parse(f"{registry.host}/deep/{repo_tag}")
            convert_image(reference, client=client, publisher=publisher)
    return Repo(
        tmp / "repo",
        registry.host,
        Digest.parse(app.config_digest),
        Digest.parse(tool.config_digest),
        Digest.parse(app.layer_digests[0]),
        Digest.parse(app.layer_digests[1]),
        Digest.parse(tool.layer_digests[1]),
    )


@pytest.fixture
def repo(pristine: Repo, tmp_path: Path) -> Repo:
    root = tmp_path / "repo"
    subprocess.run(["cp", "-a", str(pristine.root), str(root)], check=True, timeout=60)
    return Repo(
        root, *(getattr(pristine, f) for f in ("registry", "app", "tool", "base", "top_a", "top_b"))
    )


def _deep(repo: Repo, *extra: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, Json]:
    capsys.readouterr()
    code = main(["verify", "--repo", repo.spec, "--deep", "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def _found(deep: Json) -> set[tuple[str, str, str]]:
    return {(f["kind"], f["tree"], f["path"]) for f in deep["findings"]}


def test_fresh_repository_is_clean_and_indexed(
    repo: Repo, capsys: pytest.CaptureFixture[str]
) -> None:
    for layer in (repo.base, repo.top_a, repo.top_b):
        index = from_bytes((repo.root / layout.layer_content_index(layer)).read_bytes(), what="t")
        assert index  # the layer's own files, with their hashes
        assert not any(path.endswith(layout.CATALOG_MARKER) for path in index)
    base = from_bytes((repo.root / layout.layer_content_index(repo.base)).read_bytes(), what="t")
    assert base["bin/sh"] == Entry("l", 0o777, 7, "busybox")
    code, value = _deep(repo, capsys=capsys)
    assert value["deep"]["findings"] == [] and value["deep"]["notices"] == []
    assert code == EXIT_OK
    assert main(["verify", "--repo", repo.spec, "--deep"]) == EXIT_OK
    assert "content: clean (3 layer(s), 2 flat tree(s))" in capsys.readouterr().out


def test_append_through_a_shared_inode_is_found_and_repaired(
    repo: Repo, capsys: pytest.CaptureFixture[str]
) -> None:
    with open(repo.flat(repo.app) / "etc/os-release", "ab") as stream:
        stream.write(b"EXTRA=1\n")  # what a read-write crun bundle did
    code, value = _deep(repo, capsys=capsys)
    assert code == EXIT_FAILURE
    found = _found(value["deep"])
    assert found == {
        ("content-changed", str(layout.layerfs_dir(repo.base)), "etc/os-release"),
        ("content-changed", str(layout.flat_dir(repo.app)), "etc/os-release"),
        ("content-changed", str(layout.flat_dir(repo.tool)), "etc/os-release"),
    }
    layer = next(f for f in value["deep"]["findings"] if f["layer"])
    assert sorted(layer["references"]) == [repo.name("app:1"), repo.name("tool:1")]
    assert "size 8 -> 16" in layer["message"] and "content changed" in layer["message"]

    code, value = _deep(repo, "--repair", capsys=capsys)
    assert code == EXIT_OK, value
    assert sorted(value["deep"]["removed"]) == sorted(
        [
            str(layout.layer_dir(repo.base)),
            str(layout.flat_dir(repo.app)),
            str(layout.flat_dir(repo.tool)),
        ]
    )
    assert sorted(value["deep"]["reconverted"]) == [repo.name("app:1"), repo.name("tool:1")]
    assert (repo.flat(repo.app) / "etc/os-release").read_bytes() == b"ID=deep\n"
    assert (repo.layerfs(repo.base) / "etc/os-release").read_bytes() == b"ID=deep\n"
    code, value = _deep(repo, capsys=capsys)
    assert (code, value["deep"]["findings"], value["findings"]) == (EXIT_OK, [], [])


def test_added_missing_and_changed_entries_are_named(
    repo: Repo, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo.layerfs(repo.top_b) / "opt/b").unlink()
    (repo.flat(repo.app) / "opt/new").write_bytes(b"new")
    os.chmod(repo.flat(repo.app) / "usr/lib/z", 0o600)  # shared with layer top-a
    os.unlink(repo.flat(repo.tool) / "usr/lib/x")
    code, value = _deep(repo, capsys=capsys)
    assert code == EXIT_FAILURE
    assert _found(value["deep"]) == {
        ("content-missing", str(layout.layerfs_dir(repo.top_b)), "opt/b"),
        ("content-added", str(layout.flat_dir(repo.app)), "opt/new"),
        ("content-changed", str(layout.layerfs_dir(repo.top_a)), "usr/lib/z"),
        ("content-changed", str(layout.flat_dir(repo.app)), "usr/lib/z"),
        ("content-missing", str(layout.flat_dir(repo.tool)), "usr/lib/x"),
    }
    code, value = _deep(repo, "--repair", capsys=capsys)
    assert code == EXIT_OK, value
    assert _deep(repo, capsys=capsys)[0] == EXIT_OK


def test_podman_rootfs_writes_are_reported_as_added(
    repo: Repo, capsys: pytest.CaptureFixture[str]
) -> None:
    flat = repo.flat(repo.tool)
    os.symlink("/proc/mounts", flat / "etc/mtab")
    (flat / "etc/hostname").write_bytes(b"container\n")
    os.mkdir(flat / "run")
    (flat / "run/.containerenv").write_bytes(b"")
    code, value = _deep(repo, capsys=capsys)
    assert code == EXIT_FAILURE
    tree = str(layout.flat_dir(repo.tool))
    assert _found(value["deep"]) == {
        ("content-added", tree, path)
        for path in ("etc/mtab", "etc/hostname", "run", "run/.containerenv")
    }
    assert main(["verify", "--repo", repo.spec, "--deep"]) == EXIT_FAILURE
    text = capsys.readouterr().out
    assert f"flat tree of image {repo.tool} ({repo.name('tool:1')}): etc/hostname added" in text


def test_layer_without_index_is_a_notice(repo: Repo, capsys: pytest.CaptureFixture[str]) -> None:
    (repo.root / layout.layer_content_index(repo.top_b)).unlink()
    code, value = _deep(repo, capsys=capsys)
    assert code == EXIT_OK
    notices = {(f["kind"], f["tree"]) for f in value["deep"]["notices"]}
    assert notices == {
        ("no-content-index", str(layout.layerfs_dir(repo.top_b))),
        ("no-content-index", str(layout.flat_dir(repo.tool))),
    }


def test_compose_applies_wh_files_whiteouts_and_opaque_markers() -> None:
    f = Entry("f", 0o644, 1, "h")
    d = Entry("d", 0o755, 0)
    lower = {".": d, "a": d, "a/x": f, "b": d, "b/y": f, "c": f}
    upper = {".": d, "a": d, "a/.wh..wh..opq": f, "a/z": f, ".wh.b": f, "c": d, "c/w": f}
    assert compose([(lower, True), (upper, True)]) == {"a": d, "a/z": f, "c": d, "c/w": f}
    overlay = {".": d, "b": Entry("c", 0, 0, "0,0"), "a": Entry("d", 0o755, 0, "o")}
    assert compose([(lower, False), (overlay, False)]) == {"a": overlay["a"], "c": f}


def test_index_round_trips_every_entry_kind(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "small").write_bytes(b"s")
    (tree / "large").write_bytes(b"L" * (3 << 20))  # past the one-read size
    os.chmod(tree / "large", 0o644)
    os.symlink("../dangling", tree / "link")
    os.mkfifo(tree / "fifo", 0o600)
    os.mkdir(tree / os.fsdecode(b"caf\xe9"), 0o555)
    os.link(tree / "small", tree / "hard")
    (tree / layout.CATALOG_MARKER).write_bytes(b"")
    index = index_tree(tree)
    assert from_bytes(to_bytes(index), what="t") == index
    assert set(index) == {".", "small", "large", "link", "fifo", "hard", os.fsdecode(b"caf\xe9")}
    assert index["large"] == Entry(
        "f", 0o644, 3 << 20, hashlib.sha256(b"L" * (3 << 20)).hexdigest()
    )
    assert index["hard"] == index["small"]
    assert index["link"] == Entry("l", 0o777, 11, "../dangling")
    assert index[os.fsdecode(b"caf\xe9")] == Entry("d", 0o555, 0, "")
    assert index["fifo"] == Entry("p", 0o600, 0, "")
    with pytest.raises(ValueError, match="t: not a content index"):
        from_bytes(b"not gzip", what="t")


def test_every_corpus_image_verifies_clean(
    tmp_path: Path,
    push_image: PushImage,
    registry: RegistryServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The indexes composed in layer order are the merged flat tree, for every awkward case
    of the corpus (whiteouts before their targets, opaque roots, hard links, symlinked
    parents, devices, xattrs, replacements, every compression), all in one repository."""
    publisher = open_publisher(f"dir:{tmp_path / 'repo'}")
    with RegistryClient(RegistryOptions()) as client:
        for image in CORPUS:
            push_image(image.build(tmp_path / "layout"), f"deep-corpus/{image.name}:latest")
            reference = parse(f"{registry.host}/deep-corpus/{image.name}:latest")
            convert_image(reference, client=client, publisher=publisher)
    capsys.readouterr()
    code = main(["verify", "--repo", publisher.spec, "--deep", "--json"])
    value = json.loads(capsys.readouterr().out)
    assert (value["deep"]["findings"], value["deep"]["notices"]) == ([], [])
    assert code == EXIT_OK


def test_repair_removes_nothing_when_the_registry_does_not_serve_an_image(
    repo: Repo, capsys: pytest.CaptureFixture[str]
) -> None:
    with open(repo.flat(repo.app) / "etc/os-release", "ab") as stream:
        stream.write(b"EXTRA=1\n")
    # The registry itself, under a path where it serves nothing: every manifest is a 404.
    gone = f"--mirror={repo.registry}=http://{repo.registry}/gone"
    code, value = _deep(repo, "--repair", gone, capsys=capsys)
    assert code == EXIT_FAILURE
    assert value["deep"]["removed"] == [] and value["deep"]["reconverted"] == []
    failed = {item["reference"] for item in value["deep"]["failed"]}
    assert failed == {repo.name("app:1"), repo.name("tool:1")}
    assert all("nothing removed" in item["error"] for item in value["deep"]["failed"])
    assert repo.flat(repo.app).is_dir() and repo.layerfs(repo.base).is_dir()
    assert len(value["deep"]["findings"]) == 3  # still there, still named
