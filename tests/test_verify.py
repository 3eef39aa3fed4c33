"""`unpacked verify`: repositories converted from real pushed images, corrupted one way each.

The pristine repository (built once per module, copied with hard links kept for each
test) holds three images that share a base layer, and a moved tag:

    app:1      -> image 1 (base, l1)
    tool:1     -> image 2 (base, l2)
    app:latest -> image 3 (base, l3), then moved to image 1: image 3 is scheduled for
                  removal, its manifest is gone, its flat tree and origin ids remain
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from support.oci import BuiltImage, TarEntry, build_image, tar_bytes
from support.registry import RegistryServer
from support.tree import snapshot
from unpacked import layout
from unpacked.cli import EXIT_FAILURE, EXIT_INPUT, EXIT_OK, EXIT_PUBLISH, main
from unpacked.convert import convert_image
from unpacked.digest import Digest
from unpacked.errors import RepositoryLockedError
from unpacked.publish import Capabilities, PrivateArea, Publisher, Transaction, open_publisher
from unpacked.records import RemovalSchedule, origin_json, parse_origin
from unpacked.reference import parse
from unpacked.registry import RegistryClient, RegistryOptions
from unpacked.verify import (
    Kind,
    Remedy,
    VerifyOptions,
    repair_repository,
    verify_repository,
)

PushImage = Callable[..., object]


@dataclass(frozen=True)
class Pristine:
    root: Path
    registry: str
    image1: Digest
    image2: Digest
    image3: Digest
    base: Digest
    l1: Digest
    l2: Digest
    l3: Digest


@dataclass(frozen=True)
class Repo:
    """A copy of the pristine repository for one test."""

    root: Path
    p: Pristine

    @property
    def spec(self) -> str:
        return f"dir:{self.root}"

    def name(self, repo_tag: str) -> str:
        return f"{self.p.registry}/verify/{repo_tag}"

    def link(self, repo_tag: str) -> PurePosixPath:
        return PurePosixPath(self.name(repo_tag))

    def metadata(self, repo_tag: str) -> Path:
        return self.root / layout.METADATA / self.name(repo_tag)

    def origin(self, layer: Digest) -> frozenset[str]:
        raw = (self.root / layout.layer_origin_file(layer)).read_bytes()
        return parse_origin(raw, what="test")

    def set_origin(self, layer: Digest, ids: set[str]) -> None:
        (self.root / layout.layer_origin_file(layer)).write_bytes(origin_json(ids))

    def relink(self, repo_tag: str, target: str) -> None:
        path = self.root / self.link(repo_tag)
        path.unlink()
        path.symlink_to(target)


def _image(tmp: Path, name: str, base: bytes, content: bytes) -> BuiltImage:
    layer = tar_bytes([TarEntry.dir("opt"), TarEntry.file(f"opt/{name}", content)])
    return build_image(tmp / name, [base, layer])


@pytest.fixture(scope="module")
def pristine(
    tmp_path_factory: pytest.TempPathFactory, push_image: PushImage, registry: RegistryServer
) -> Pristine:
    tmp = tmp_path_factory.mktemp("verify")
    base = tar_bytes([TarEntry.dir("etc"), TarEntry.file("etc/os-release", b"ID=verify\n")])
    images = [_image(tmp, f"image{n}", base, f"image {n}\n".encode()) for n in (1, 2, 3)]
    push_image(images[0], "verify/app:1")
    push_image(images[1], "verify/tool:1")
    push_image(images[2], "verify/app:latest")
    publisher = open_publisher(f"dir:{tmp / 'repo'}")
    with RegistryClient(RegistryOptions()) as client:

        def convert(repo_tag: str) -> None:
            reference = parse(f"{registry.host}/verify/{repo_tag}")
            convert_image(reference, client=client, publisher=publisher)

        for repo_tag in ("app:1", "tool:1", "app:latest"):
            convert(repo_tag)
        push_image(images[0], "verify/app:latest")  # the tag moves to image 1
        convert("app:latest")
    digests = [Digest.parse(d) for d in (*images[0].layer_digests, *images[1].layer_digests)]
    return Pristine(
        root=tmp / "repo",
        registry=registry.host,
        image1=Digest.parse(images[0].config_digest),
        image2=Digest.parse(images[1].config_digest),
        image3=Digest.parse(images[2].config_digest),
        base=digests[0],
        l1=digests[1],
        l2=digests[3],
        l3=Digest.parse(images[2].layer_digests[1]),
    )


@pytest.fixture
def repo(pristine: Pristine, tmp_path: Path) -> Repo:
    root = tmp_path / "repo"
    # cp -a keeps the hard links between flat trees and layers, and every mode.
    subprocess.run(["cp", "-a", str(pristine.root), str(root)], check=True, timeout=60)
    return Repo(root, pristine)


def _verify(repo: Repo, **options: bool) -> set[tuple[Kind, str]]:
    report = verify_repository(
        open_publisher(repo.spec), options=VerifyOptions(**options), lock_timeout=10
    )
    return {(finding.kind, str(finding.path)) for finding in report.findings}


def _flat_trees(repo: Repo) -> dict[bytes, object]:
    # Repairs may add catalog markers and delete temporary files, nothing else in there.
    return {
        path: node
        for path, node in snapshot(repo.root / layout.FLAT).items()
        if not path.endswith((b".cvmfscatalog", b".unpacked-new"))
    }


# --- a clean repository -------------------------------------------------------------


def test_fresh_repository_is_clean(repo: Repo, capsys: pytest.CaptureFixture[str]) -> None:
    p = repo.p
    # The state the test relies on: image 3 scheduled, its layer still naming it.
    schedule = RemovalSchedule.from_bytes((repo.root / layout.REMOVE_SCHEDULE).read_bytes())
    assert schedule.image_ids() == {str(p.image3)}
    assert not (repo.metadata("app:latest") / "manifest.json").read_bytes().count(p.l3.hex.encode())
    assert repo.origin(p.l3) == {str(p.image3)}
    assert repo.origin(p.base) == {str(p.image1), str(p.image2), str(p.image3)}

    assert _verify(repo) == set()
    assert main(["verify", "--repo", repo.spec]) == EXIT_OK
    assert capsys.readouterr().out.strip() == f"{repo.spec}: clean"


# --- each corruption, found with its kind and path -----------------------------------

Found = set[tuple[Kind, str]]


def _metadata_file(repo: Repo, repo_tag: str, name: str) -> str:
    return str(layout.METADATA / repo.name(repo_tag) / name)


def _dangling_link(repo: Repo) -> Found:
    repo.relink("tool:1", f"../../../.flat/00/{'00' * 32}")
    return {(Kind.LINK_DANGLING, str(repo.link("tool:1")))}


def _flat_tree_deleted(repo: Repo) -> Found:
    shutil.rmtree(repo.root / layout.flat_dir(repo.p.image2))
    return {(Kind.LINK_DANGLING, str(repo.link("tool:1")))}


def _absolute_link(repo: Repo) -> Found:
    repo.relink("app:1", str(repo.root / layout.flat_dir(repo.p.image1)))
    return {(Kind.LINK_ABSOLUTE, str(repo.link("app:1")))}


def _link_to_other_image(repo: Repo) -> Found:
    link = repo.link("app:1")
    repo.relink("app:1", str(layout.relative_target(link, layout.flat_dir(repo.p.image2))))
    return {(Kind.LINK_MISMATCH, str(link))}


def _missing_layerfs(repo: Repo) -> Found:
    shutil.rmtree(repo.root / layout.layerfs_dir(repo.p.l2))
    return {(Kind.LAYERFS_MISSING, str(layout.layerfs_dir(repo.p.l2)))}


def _missing_layer(repo: Repo) -> Found:
    shutil.rmtree(repo.root / layout.layer_dir(repo.p.l2))
    return {(Kind.LAYER_MISSING, str(layout.layer_dir(repo.p.l2)))}


def _origin_extra_id(repo: Repo) -> Found:
    repo.set_origin(repo.p.l1, {str(repo.p.image1), str(repo.p.image2)})
    return {(Kind.ORIGIN_MISMATCH, str(layout.layer_origin_file(repo.p.l1)))}


def _origin_missing_id(repo: Repo) -> Found:
    repo.set_origin(repo.p.base, {str(repo.p.image2), str(repo.p.image3)})
    return {(Kind.ORIGIN_MISMATCH, str(layout.layer_origin_file(repo.p.base)))}


def _origin_unparsable(repo: Repo) -> Found:
    (repo.root / layout.layer_origin_file(repo.p.l1)).write_text('{"origin": "x"}')
    return {(Kind.ORIGIN_INVALID, str(layout.layer_origin_file(repo.p.l1)))}


def _status_unparsable(repo: Repo) -> Found:
    (repo.metadata("tool:1") / "status.json").write_text('{"reference": ')
    return {(Kind.STATUS_INVALID, _metadata_file(repo, "tool:1", "status.json"))}


def _manifest_of_other_image(repo: Repo) -> Found:
    shutil.copy(repo.metadata("tool:1") / "manifest.json", repo.metadata("app:1"))
    return {(Kind.MANIFEST_MISMATCH, _metadata_file(repo, "app:1", "manifest.json"))}


def _metadata_deleted(repo: Repo) -> Found:
    shutil.rmtree(repo.metadata("tool:1"))
    return {(Kind.METADATA_MISSING, str(layout.METADATA / repo.name("tool:1")))}


def _image_deleted_by_hand(repo: Repo) -> Found:
    # Link, metadata and flat tree gone: layer 2 is an orphan whose origin still names
    # image 2, and the shared base layer still lists it.
    (repo.root / repo.link("tool:1")).unlink()
    shutil.rmtree(repo.metadata("tool:1"))
    shutil.rmtree(repo.root / layout.flat_dir(repo.p.image2))
    return {
        (Kind.LAYER_ORPHAN, str(layout.layer_origin_file(repo.p.l2))),
        (Kind.ORIGIN_MISMATCH, str(layout.layer_origin_file(repo.p.base))),
    }


def _orphan_flat_tree(repo: Repo) -> Found:
    (repo.root / repo.link("tool:1")).unlink()
    shutil.rmtree(repo.metadata("tool:1"))
    return {(Kind.FLAT_ORPHAN, str(layout.flat_dir(repo.p.image2)))}


def _schedule_unparsable(repo: Repo) -> Found:
    (repo.root / layout.REMOVE_SCHEDULE).write_text("[")
    return {
        (Kind.SCHEDULE_INVALID, str(layout.REMOVE_SCHEDULE)),
        (Kind.FLAT_ORPHAN, str(layout.flat_dir(repo.p.image3))),
    }


def _stray_transaction(repo: Repo) -> Found:
    area = repo.root / ".unpacked" / "transactions" / "20240101T000000-4242-deadbeef"
    (area / "new").mkdir(parents=True)
    (area / "new" / "0").write_bytes(b"half a file")
    return {(Kind.TRANSACTION_STALE, ".unpacked/transactions/20240101T000000-4242-deadbeef")}


def _temp_file(repo: Repo) -> Found:
    path = layout.flat_dir(repo.p.image1) / ".singularity.d/env/.90-environment.sh.unpacked-new"
    (repo.root / path).write_bytes(b"#!/bin/sh\n")
    return {(Kind.TEMP_FILE, str(path))}


def _flat_marker_missing(repo: Repo) -> Found:
    marker = layout.flat_dir(repo.p.image1) / layout.CATALOG_MARKER
    (repo.root / marker).unlink()
    return {(Kind.CATALOG_MISSING, str(marker))}


def _layer_markers_missing(repo: Repo) -> Found:
    markers = [
        layout.LAYERS / layout.CATALOG_MARKER,
        layout.layerfs_dir(repo.p.base) / layout.CATALOG_MARKER,
    ]
    for marker in markers:
        (repo.root / marker).unlink()
    return {(Kind.CATALOG_MISSING, str(marker)) for marker in markers}


@dataclass(frozen=True)
class Case:
    """A corruption, what verify finds, and what only a re-conversion of ``reconvert`` fixes.

    ``after_repair``: the findings --repair leaves (None: the same as found).
    """

    corrupt: Callable[[Repo], Found]
    reconvert: str | None = None
    after_repair: Callable[[Repo], Found] | None = None


CASES: dict[str, Case] = {
    "dangling-link": Case(_dangling_link, "tool:1"),
    "flat-tree-deleted": Case(_flat_tree_deleted, "tool:1"),
    "absolute-link": Case(_absolute_link),
    "link-to-other-image": Case(_link_to_other_image, "app:1"),
    # The layer directory goes, so that the re-conversion unpacks the layer again.
    "missing-layerfs": Case(
        _missing_layerfs,
        "tool:1",
        lambda r: {(Kind.LAYER_MISSING, str(layout.layer_dir(r.p.l2)))},
    ),
    "missing-layer": Case(_missing_layer, "tool:1"),
    "origin-extra-id": Case(_origin_extra_id),
    "origin-missing-id": Case(_origin_missing_id),
    "origin-unparsable": Case(_origin_unparsable),
    "status-unparsable": Case(_status_unparsable, "tool:1"),
    # The contradicting manifest goes, so that convert does not find the image current.
    "manifest-status-mismatch": Case(
        _manifest_of_other_image,
        "app:1",
        lambda r: {(Kind.MANIFEST_INVALID, _metadata_file(r, "app:1", "manifest.json"))},
    ),
    "metadata-deleted": Case(_metadata_deleted, "tool:1"),
    "orphan-layer": Case(_image_deleted_by_hand),
    "orphan-flat-tree": Case(_orphan_flat_tree),
    "schedule-unparsable": Case(_schedule_unparsable),
    "stray-transaction": Case(_stray_transaction),
    "temp-file": Case(_temp_file),
    "flat-marker-missing": Case(_flat_marker_missing),
    "layer-markers-missing": Case(_layer_markers_missing),
}
NEEDS_REGISTRY = [name for name, case in CASES.items() if case.reconvert]


@pytest.mark.parametrize("name", CASES.keys())
def test_corruption_is_found(repo: Repo, name: str) -> None:
    expected = CASES[name].corrupt(repo)
    before = snapshot(repo.root)
    assert _verify(repo) == expected
    # The check changed nothing, stale staging included.
    assert snapshot(repo.root) == before


@pytest.mark.parametrize("name", CASES.keys())
def test_repair(repo: Repo, name: str) -> None:
    case = CASES[name]
    found = case.corrupt(repo)
    flat_before = _flat_trees(repo)
    publisher = open_publisher(repo.spec)
    report = repair_repository(publisher, lock_timeout=10, now=lambda: "2024-05-01T00:00:00Z")

    assert {(f.kind, str(f.path)) for f in report.before.findings} == found
    if case.reconvert is None:
        assert report.after.clean
    else:
        expected = found if case.after_repair is None else case.after_repair(repo)
        assert {(f.kind, str(f.path)) for f in report.after.findings} == expected
        assert all(f.remedy is Remedy.RECONVERT for f in report.after.findings)
        assert report.after.references_to_reconvert() == (repo.name(case.reconvert),)
    # Images stay intact: no flat tree lost or changed a byte.
    assert _flat_trees(repo) == flat_before
    assert not list((repo.root / ".unpacked" / "transactions").iterdir())


@pytest.mark.parametrize("name", NEEDS_REGISTRY)
def test_listed_reconversion_makes_the_repository_clean(
    repo: Repo, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    CASES[name].corrupt(repo)
    assert main(["verify", "--repo", repo.spec, "--repair", "--json"]) == EXIT_FAILURE
    result = json.loads(capsys.readouterr().out)
    [item] = result["reconvert"]
    assert item["reference"] == repo.name(str(CASES[name].reconvert))
    command = item["command"].split()
    assert command[:2] == ["unpacked", "convert-single-image"]
    assert main(command[1:]) == EXIT_OK
    capsys.readouterr()
    assert _verify(repo) == set()


def test_orphan_flat_tree_is_scheduled_not_deleted(repo: Repo) -> None:
    _orphan_flat_tree(repo)
    report = repair_repository(
        open_publisher(repo.spec), lock_timeout=10, now=lambda: "2024-05-01T00:00:00Z"
    )
    assert report.after.clean
    assert (repo.root / layout.flat_dir(repo.p.image2)).is_dir()
    schedule = RemovalSchedule.from_bytes((repo.root / layout.REMOVE_SCHEDULE).read_bytes())
    entries = {e.image_id: e for e in schedule.entries}
    assert entries.keys() == {str(repo.p.image2), str(repo.p.image3)}
    assert entries[str(repo.p.image2)].unlinked == "2024-05-01T00:00:00Z"
    assert entries[str(repo.p.image2)].reference == ""
    assert entries[str(repo.p.image3)].reference == repo.name("app:latest")


def test_repair_recomputes_origin_keeping_scheduled_images(repo: Repo) -> None:
    p = repo.p
    repo.set_origin(p.base, {str(p.image2), "sha256:" + "ab" * 32})
    repo.set_origin(p.l3, set())
    report = repair_repository(open_publisher(repo.spec), lock_timeout=10)
    assert report.after.clean
    # image 1 added, the unknown id dropped; image 3's manifest is gone, so nothing can
    # say it uses the base layer: it is neither required nor added.
    assert repo.origin(p.base) == {str(p.image1), str(p.image2)}
    assert repo.origin(p.l3) == set()


def test_absolute_link_is_made_relative(repo: Repo) -> None:
    _absolute_link(repo)
    repair_repository(open_publisher(repo.spec), lock_timeout=10)
    link = repo.link("app:1")
    expected = layout.relative_target(link, layout.flat_dir(repo.p.image1))
    assert os.readlink(repo.root / link) == str(expected)


def test_skip_layers_repository_does_not_expect_layers(repo: Repo) -> None:
    _missing_layer(repo)
    assert _verify(repo, skip_layers=True) == set()


# --- the command line ----------------------------------------------------------------


def test_json_output(repo: Repo, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "--repo", repo.spec, "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == {
        "repository": repo.spec,
        "clean": True,
        "findings": [],
        "reconvert": [],
    }
    _dangling_link(repo)
    _origin_extra_id(repo)
    assert main(["verify", "--repo", repo.spec, "--json"]) == EXIT_FAILURE
    result = json.loads(capsys.readouterr().out)
    assert result["clean"] is False
    by_kind = {f["kind"]: f for f in result["findings"]}
    assert by_kind.keys() == {"link-dangling", "origin-mismatch"}
    assert by_kind["link-dangling"] == {
        "kind": "link-dangling",
        "path": str(repo.link("tool:1")),
        "message": by_kind["link-dangling"]["message"],
        "remedy": "reconvert",
        "references": [repo.name("tool:1")],
    }
    assert str(repo.p.image2) in by_kind["origin-mismatch"]["message"]
    assert by_kind["origin-mismatch"]["remedy"] == "repair"
    assert result["reconvert"] == [
        {
            "reference": repo.name("tool:1"),
            "command": f"unpacked convert-single-image {repo.name('tool:1')} --repo {repo.spec}",
        }
    ]

    assert main(["verify", "--repo", repo.spec, "--repair", "--json"]) == EXIT_FAILURE
    repaired = json.loads(capsys.readouterr().out)
    assert {f["kind"] for f in repaired["found"]} == {"link-dangling", "origin-mismatch"}
    assert repaired["repairs"] == [f"write {layout.layer_origin_file(repo.p.l1)}"]
    assert [f["kind"] for f in repaired["findings"]] == ["link-dangling"]
    assert repaired["recovered"] == []


def test_text_output_lists_commands(repo: Repo, capsys: pytest.CaptureFixture[str]) -> None:
    _status_unparsable(repo)
    _temp_file(repo)
    assert main(["verify", "--repo", repo.spec]) == EXIT_FAILURE
    out = capsys.readouterr().out
    assert f"{repo.spec}: 2 problem(s)" in out
    assert "  temp-file: " in out
    assert f"unpacked convert-single-image {repo.name('tool:1')} --repo {repo.spec}" in out
    assert main(["verify", "--repo", repo.spec, "--repair"]) == EXIT_FAILURE
    done, remaining = capsys.readouterr().out.split(f"{repo.spec}: 1 problem(s)\n")
    assert done.startswith(f"{repo.spec}: 2 problem(s) found\n")
    assert "repaired (1 change(s) in one transaction):\n  remove .flat/" in done
    assert remaining.startswith("  status-invalid: ")
    assert "temp-file" not in remaining
    assert f"unpacked convert-single-image {repo.name('tool:1')} --repo {repo.spec}" in remaining


def test_verify_waits_for_a_running_transaction(
    repo: Repo, capsys: pytest.CaptureFixture[str]
) -> None:
    publisher = open_publisher(repo.spec)
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with publisher.transaction(lock_timeout=10):
            inside.set()
            release.wait(timeout=30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert inside.wait(timeout=10)
        with pytest.raises(RepositoryLockedError):
            verify_repository(publisher, lock_timeout=0.2)
        argv = ["verify", "--repo", repo.spec, "--lock-timeout", "0.2"]
        assert main(argv) == EXIT_PUBLISH
        assert "locked by" in capsys.readouterr().err
    finally:
        release.set()
        holder.join(timeout=30)
    assert not holder.is_alive()
    assert _verify(repo) == set()


def test_multiarch_links(repo: Repo) -> None:
    p = repo.p
    name = repo.name("app:1")
    for arch, image in (("amd64", p.image1), ("arm64:v8", p.image2)):
        link = layout.MULTIARCH / arch / name
        (repo.root / link).parent.mkdir(parents=True)
        (repo.root / link).symlink_to(layout.relative_target(link, layout.flat_dir(image)))
    (repo.root / layout.MULTIARCH / "x86_64").symlink_to("amd64")
    assert _verify(repo) == set()

    (repo.root / layout.MULTIARCH / "aarch64").symlink_to(repo.root / ".multiarch/arm64:v8")
    (repo.root / layout.MULTIARCH / "arm64:v8" / name).unlink()
    (repo.root / layout.MULTIARCH / "arm64:v8" / name).symlink_to("../../../nowhere")
    assert _verify(repo) == {
        (Kind.LINK_ABSOLUTE, ".multiarch/aarch64"),
        (Kind.LINK_DANGLING, f".multiarch/arm64:v8/{name}"),
    }


def test_missing_repository_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-repo"
    assert main(["verify", "--repo", f"dir:{missing}"]) == EXIT_INPUT
    assert "no such repository directory" in capsys.readouterr().err
    assert not missing.exists()


def test_interrupted_commit_is_completed_by_repair(repo: Repo) -> None:
    # A commit that died after its journal was written: one staged file still to place.
    area = repo.root / ".unpacked" / "transactions" / "20240101T000000-4242-cafecafe"
    (area / "new").mkdir(parents=True)
    (area / "old").mkdir()
    marker = layout.flat_dir(repo.p.image2) / layout.CATALOG_MARKER
    (repo.root / marker).unlink()
    (area / "new" / "0").write_bytes(b"")
    step = {"op": "place", "source": "0", "target": str(marker), "backup": "1"}
    (area / "journal.json").write_text(json.dumps({"format": 1, "steps": [step]}))
    report = verify_repository(open_publisher(repo.spec), lock_timeout=10)
    stale = {f.kind: f for f in report.findings}[Kind.TRANSACTION_STALE]
    assert "interrupted commit" in stale.message

    repaired = repair_repository(open_publisher(repo.spec), lock_timeout=10)
    assert repaired.recovered == (PurePosixPath(".unpacked/transactions") / area.name,)
    # The recovery placed the marker; the repair had nothing of its own left to write.
    assert repaired.changes == ()
    assert repaired.after.clean
    assert (repo.root / marker).is_file()


# --- through the publisher interface ---------------------------------------------------


class _Wrapped(Publisher):
    """Not a ``DirPublisher``: what verify may know of the backend is the interface."""

    def __init__(self, inner: Publisher, private: PrivateArea | None) -> None:
        self._inner = inner
        self._private = private
        self.spec = inner.spec
        self.root = inner.root

    def transaction(
        self, *, lease: PurePosixPath | None = None, lock_timeout: float = 600.0
    ) -> AbstractContextManager[Transaction]:
        return self._inner.transaction(lease=lease, lock_timeout=lock_timeout)

    def locked(self, *, lock_timeout: float = 600.0) -> AbstractContextManager[None]:
        return self._inner.locked(lock_timeout=lock_timeout)

    def private_area(self) -> PrivateArea | None:
        return self._private

    @property
    def capabilities(self) -> Capabilities:
        return self._inner.capabilities


def test_verify_and_repair_work_through_any_publisher(repo: Repo) -> None:
    expected = _stray_transaction(repo)
    inner = open_publisher(repo.spec)
    report = verify_repository(_Wrapped(inner, inner.private_area()), lock_timeout=10)
    assert {(f.kind, str(f.path)) for f in report.findings} == expected
    # The staging verify reports is where the publisher says its private area is.
    elsewhere = PrivateArea(PurePosixPath(".other"), PurePosixPath(".other/staging"), "j")
    assert verify_repository(_Wrapped(inner, elsewhere), lock_timeout=10).clean

    repaired = repair_repository(_Wrapped(inner, inner.private_area()), lock_timeout=10)
    assert repaired.recovered == tuple(PurePosixPath(path) for _, path in expected)
    assert repaired.after.clean


def test_the_dir_backend_stages_in_the_layout_private_dir(tmp_path: Path) -> None:
    publisher = open_publisher(f"dir:{tmp_path}")
    area = publisher.private_area()
    assert area is not None
    assert area.directory == layout.PRIVATE_DIR
    assert area.staging.parent == area.directory
    with publisher.transaction(lock_timeout=10) as tx:
        tx.write_file(PurePosixPath("f"), b"x")
        staged = list((tmp_path / area.staging).iterdir())
        assert len(staged) == 1
        assert not (staged[0] / area.journal).exists()
    assert not list((tmp_path / area.staging).iterdir())
