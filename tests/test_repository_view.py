"""The read-side view (``unpacked.repository``): its pure rules, and gc and verify agreeing.

The agreement test builds a small repository by hand with the odd entries a real one
collects (a metadata directory without a status, an image of a further platform, a
stray link, a link to something that is not a flat tree, links where no image lives)
and checks that garbage collection, verify and the view see the same images and links.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path, PurePosixPath

import pytest

from unpacked import layout, repository
from unpacked.digest import Digest
from unpacked.errors import PublishError
from unpacked.gc import read_references, read_state
from unpacked.records import ImageStatus, LayerRecord, Whiteouts, read_layer_records
from unpacked.reference import parse
from unpacked.stats import repository_stats
from unpacked.verify import Broken, scan

P = PurePosixPath
FLAT_A = "a" * 64
FLAT_B = "b" * 64
LAYER = "c" * 64


# --- pure rules ------------------------------------------------------------------------


def test_time_format_round_trips_and_naive_times_are_utc() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, 999, tzinfo=timezone(timedelta(hours=2)))
    assert repository.format_time(when) == "2026-01-02T01:04:05Z"
    assert repository.parse_time("2026-01-02T01:04:05Z") == when.replace(microsecond=0)
    assert repository.parse_time("2026-01-02T01:04:05").tzinfo is UTC
    assert repository.parse_time(repository.utc_now()) <= datetime.now(UTC)
    with pytest.raises(ValueError):
        repository.parse_time("yesterday")


def test_an_image_is_a_metadata_directory_with_a_status() -> None:
    assert repository.is_image(["status.json", "manifest.json"])
    assert repository.is_image([layout.STATUS_NAME])
    assert not repository.is_image(["manifest.json"])
    assert not repository.is_image([])


@pytest.mark.parametrize(
    ("metadata", "public", "image_name"),
    [
        (".metadata/r.io/a:1", "r.io/a:1", True),
        (".metadata/r.io/lib/a@sha256:" + "0" * 64, "r.io/lib/a@sha256:" + "0" * 64, True),
        (".metadata/.multiarch/arm64:v8/r.io/a:1", "r.io/a:1", True),
        (".metadata/.multiarch/arm64:v8/r.io", "r.io", False),
        (".metadata/.multiarch/arm64:v8", ".", False),
        (".metadata/r.io", "r.io", False),
        (".metadata/r.io/a", "r.io/a", False),
        (".metadata/localhost:5000", "localhost:5000", False),
    ],
)
def test_public_name_of_a_metadata_directory(metadata: str, public: str, image_name: bool) -> None:
    assert repository.public_name_of(P(metadata)) == P(public)
    assert repository.is_image_name(P(metadata)) is image_name


def test_a_status_belongs_in_the_directory_of_its_reference() -> None:
    reference = parse("r.io/a:1")
    assert repository.belongs_in(P(".metadata/r.io/a:1"), reference)
    assert repository.belongs_in(P(".metadata/.multiarch/ppc64le/r.io/a:1"), reference)
    assert not repository.belongs_in(P(".metadata/r.io/a:2"), reference)


@pytest.mark.parametrize(
    ("link", "target", "image_id"),
    [
        ("r.io/a:1", f"../.flat/aa/{FLAT_A}", f"sha256:{FLAT_A}"),
        ("r.io/lib/a:1", f"../../.flat/aa/{FLAT_A}/", f"sha256:{FLAT_A}"),
        (".multiarch/amd64/r.io/a:1", f"../../../.flat/aa/{FLAT_A}", f"sha256:{FLAT_A}"),
        ("r.io/a:1", f"/cvmfs/x.cern.ch/.flat/aa/{FLAT_A}", f"sha256:{FLAT_A}"),
        ("r.io/a:1", f"../.flat/ab/{FLAT_A}", None),  # wrong super-directory
        ("r.io/a:1", f"../.layers/cc/{LAYER}", None),
        ("r.io/a:1", f"../.flat/aa/{FLAT_A}/bin", None),
        ("r.io/a:1", "elsewhere", None),
    ],
)
def test_flat_target_image(link: str, target: str, image_id: str | None) -> None:
    assert repository.flat_target_image(P(link), target) == image_id


@pytest.mark.parametrize(
    ("path", "public"),
    [
        ("r.io/a:1", True),
        ("r.io/lib/a@sha256:" + "0" * 64, True),
        ("a:1", False),  # at the root: no registry
        ("r.io/a", False),  # no tag
        (".multiarch/amd64/r.io/a:1", False),
        ("podmanStore/x/a:1", False),
        ("localhost:5000/dir/a", False),
        ("r.io/.old/a:1", False),
    ],
)
def test_what_a_public_link_is(path: str, public: bool) -> None:
    assert repository.is_public_link(P(path)) is public


def test_the_orphan_marker_is_the_one_gc_and_verify_write() -> None:
    from unpacked import gc, verify

    assert repository.ORPHAN == gc.ORPHAN == verify.ORPHAN_REFERENCE == ""


def test_layer_records_read_back_typed() -> None:
    record = LayerRecord("id1", "2026-01-01T00:00:00Z", "sha256:1", "sha256:2", 7, Whiteouts.KEEP)
    raw = json.dumps([record.to_json()]).encode()
    assert read_layer_records(raw, what="x") == (record,)
    assert record.to_json()["unpacked-whiteouts"] == "wh-files"
    legacy = {k: v for k, v in record.to_json().items() if k != "unpacked-whiteouts"}
    (read,) = read_layer_records(json.dumps([legacy]).encode(), what="x")
    assert read.whiteouts is Whiteouts.OVERLAY
    assert read_layer_records(None, what="x") == ()
    for bad in ({**legacy, "diff-size": "7"}, {**legacy, "unpacked-whiteouts": "?"}, {"id": "1"}):
        with pytest.raises(ValueError, match=r"x: malformed layers\.json"):
            read_layer_records(json.dumps([bad]).encode(), what="x")


# --- gc and verify agree ---------------------------------------------------------------


def _manifest(config_hex: str) -> bytes:
    descriptor = {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "size": 1}
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": f"sha256:{config_hex}",
                "size": 1,
            },
            "layers": [{**descriptor, "digest": f"sha256:{LAYER}"}],
        }
    ).encode()


def _image(root: Path, metadata: str, reference: str, config_hex: str, platform: str) -> None:
    directory = root / metadata
    directory.mkdir(parents=True)
    raw = _manifest(config_hex)
    (directory / layout.MANIFEST_NAME).write_bytes(raw)
    status = ImageStatus(
        reference=reference,
        digest=str(Digest.of(raw)),
        media_type="application/vnd.oci.image.manifest.v1+json",
        manifest_digest=str(Digest.of(raw)),
        image_id=f"sha256:{config_hex}",
        platform=platform,
        last_check="2026-01-01T00:00:00Z",
        last_change="2026-01-01T00:00:00Z",
    )
    (directory / layout.STATUS_NAME).write_bytes(status.to_bytes())


def _link(root: Path, path: str, target: str) -> None:
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, root / path)


@pytest.fixture
def odd_repository(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for hexdigest in (FLAT_A, FLAT_B):
        (root / layout.flat_dir(Digest("sha256", hexdigest))).mkdir(parents=True)
    (root / layout.layerfs_dir(Digest("sha256", LAYER))).mkdir(parents=True)
    (root / ".flat" / "zz" / "not-a-digest").mkdir(parents=True)  # not part of the layout
    _image(root, ".metadata/r.io/a:1", "r.io/a:1", FLAT_A, "linux/amd64")
    _link(root, "r.io/a:1", f"../.flat/aa/{FLAT_A}")
    _image(root, ".metadata/.multiarch/arm64:v8/r.io/a:1", "r.io/a:1", FLAT_B, "linux/arm64/v8")
    _link(root, ".multiarch/arm64:v8/r.io/a:1", f"../../../.flat/bb/{FLAT_B}")
    _link(root, ".multiarch/aarch64", "arm64:v8")
    # A metadata directory without a status: not an image, whatever its name.
    (root / ".metadata/r.io/b:2").mkdir(parents=True)
    (root / ".metadata/r.io/b:2" / layout.MANIFEST_NAME).write_bytes(_manifest(FLAT_B))
    _link(root, "r.io/stray", "../nowhere")  # a stray link
    _link(root, "r.io/c:3", f"../.layers/cc/{LAYER}")  # a link to a non-flat target
    _link(root, "podmanStore/x:1", f"../.flat/aa/{FLAT_A}")  # not a public area
    _link(root, ".unpacked/x:1", f"../.flat/aa/{FLAT_A}")
    # No public name has a component starting with a dot: gc never counted this one (verify
    # did, before both read through the view).
    _link(root, "r.io/.old/a:1", f"../../.flat/aa/{FLAT_A}")
    return root


def test_gc_and_verify_see_the_same_images(odd_repository: Path) -> None:
    root = odd_repository
    tree = repository.metadata_tree(root)
    images = {P(".metadata/r.io/a:1"), P(".metadata/.multiarch/arm64:v8/r.io/a:1")}
    assert set(tree.images) == images
    assert tree.unrecorded == (P(".metadata/r.io/b:2"),)

    gc_images = {image.metadata for image in read_references(root).published}
    snapshot = scan(root)
    verify_images = {
        layout.METADATA / image.name
        for image in snapshot.images
        if not isinstance(image.status, Broken)
    }
    verify_statusless = {
        layout.METADATA / image.name
        for image in snapshot.images
        if isinstance(image.status, Broken)
    }
    assert gc_images == verify_images == images
    assert verify_statusless == set(tree.unrecorded)


def test_gc_and_verify_see_the_same_links_to_flat_trees(odd_repository: Path) -> None:
    root = odd_repository
    gc_links = dict(read_references(root).links)
    verify_links = {
        link.path: f"sha256:{link.resolved.name}"
        for link in scan(root).links
        if link.resolved is not None and link.resolved.parts[0] == str(layout.FLAT)
    }
    assert (
        gc_links
        == verify_links
        == {
            P("r.io/a:1"): f"sha256:{FLAT_A}",
            P(".multiarch/arm64:v8/r.io/a:1"): f"sha256:{FLAT_B}",
        }
    )
    view = {link.path: link for link in repository.links(root)}
    assert set(view) == {
        P("r.io/a:1"),
        P("r.io/c:3"),
        P("r.io/stray"),
        P(".multiarch/aarch64"),
        P(".multiarch/arm64:v8/r.io/a:1"),
    }
    assert [path for path, link in view.items() if link.public] == [P("r.io/a:1"), P("r.io/c:3")]


def test_gc_verify_and_the_view_agree_on_the_fanouts(odd_repository: Path) -> None:
    root = odd_repository
    state = read_state(root)
    snapshot = scan(root)
    expected = frozenset({f"sha256:{FLAT_A}", f"sha256:{FLAT_B}"})
    assert state.flat_trees == snapshot.flat_trees == repository.flat_trees(root) == expected
    assert set(state.layers) == {layer.digest for layer in snapshot.layers} == {f"sha256:{LAYER}"}
    assert repository.fanout(root, layout.FLAT).parents == ("aa", "bb", "zz")
    assert state.references.live_layers == {f"sha256:{LAYER}"}


def test_stats_counts_what_the_view_lists(odd_repository: Path) -> None:
    stats = repository_stats(odd_repository)
    assert stats.images == sum(link.public for link in repository.links(odd_repository)) == 2
    assert stats.flat_trees == len(repository.fanout(odd_repository, layout.FLAT).digests) == 2
    assert stats.layers == 1


def test_strict_and_tolerant_status_reading(odd_repository: Path) -> None:
    root = odd_repository
    metadata = P(".metadata/r.io/a:1")
    (root / metadata / layout.STATUS_NAME).write_bytes(b"{")
    assert repository.find_status(root, metadata / layout.STATUS_NAME, "r.io/a:1") is None
    assert repository.find_status(root, P(".metadata/r.io/b:2/status.json"), "b") is None
    assert [s.reference for s in repository.list_statuses(root)] == ["r.io/a:1"]
    with pytest.raises(PublishError, match=r"r.io/a:1/status.json: unreadable image status"):
        read_references(root)
