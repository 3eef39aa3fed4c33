"""Garbage collection, delete-image and prune, against images converted from the real registry.

Every image here is two layers: ``BASE`` (shared by all images of a test) and a layer of
its own, so removing one image must remove exactly its own layer and rewrite the
``origin.json`` of the shared one. Times are injected: an image unlinked "now" expires
at ``now + grace``. The pure planner is also checked on its own (at the end), including
the property the sweep relies on: carrying out a plan batch by batch, planning again
each time, gives exactly the plan a dry run shows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gc_worker import check_consistency, harden, image_trees
from support.oci import BuiltImage, TarEntry, build_image, tar_bytes
from support.registry import RegistryServer, free_port
from support.samples import SampleImages
from support.tree import Snapshot, snapshot
from unpacked import layout
from unpacked.cli import EXIT_FAILURE, EXIT_INPUT, EXIT_OK, EXIT_PUBLISH, main
from unpacked.cli._gc import plan_json
from unpacked.convert import ConvertOptions, ConvertResult, convert_image
from unpacked.digest import Digest
from unpacked.errors import ConfigError, PublishError
from unpacked.gc import (
    DEFAULT_GRACE,
    ORPHAN,
    Batch,
    ImageRemoval,
    OriginUpdate,
    Plan,
    PublishedImage,
    References,
    RepositoryState,
    collect_garbage,
    delete_image,
    plan_collection,
    plan_garbage_collection,
    plan_prune,
    prune,
)
from unpacked.gc._confirm import Confirmer
from unpacked.platform import DEFAULT as DEFAULT_PLATFORM
from unpacked.platform import Platform
from unpacked.publish import open_publisher
from unpacked.records import RemovalSchedule, ScheduledRemoval
from unpacked.reference import Reference, parse
from unpacked.registry import RegistryClient, RegistryOptions
from unpacked.repository import format_time
from unpacked.verify import verify_repository
from unpacked.wishlist import loads

T = TarEntry
P = PurePosixPath
NOW = datetime.now(UTC)


def expired() -> datetime:
    """A moment when everything unlinked until now has passed its grace period."""
    return datetime.now(UTC) + DEFAULT_GRACE + timedelta(seconds=1)


BASE = tar_bytes(
    [
        T.dir("etc"),
        T.file("etc/os-release", b"ID=gc-test\n"),
        T.dir("usr"),
        T.file("usr/shared", b"in the base layer\n" * 50),
    ]
)
WORKER = Path(__file__).with_name("gc_worker.py")


class Lab:
    """A repository, the registry, and short names for this test's images."""

    def __init__(
        self, tmp_path: Path, registry: RegistryServer, push_image: Any, client: RegistryClient
    ) -> None:
        self.tmp = tmp_path
        self.registry = registry
        self.push_image = push_image
        self.client = client
        self.prefix = f"gc/{secrets.token_hex(4)}"
        self.publisher = open_publisher(f"dir:{tmp_path / 'repo'}")
        self.root = self.publisher.root
        self._layouts = 0

    def ref(self, name: str, tag: str = "1") -> Reference:
        return parse(f"{self.registry.host}/{self.prefix}-{name}:{tag}")

    def push(self, name: str, tag: str, own: str | Sequence[TarEntry]) -> BuiltImage:
        """An image of ``BASE`` and a layer of its own (a file named ``own``, or entries)."""
        entries = [T.file(f"own-{own}", own.encode())] if isinstance(own, str) else own
        self._layouts += 1
        built = build_image(self.tmp / f"layout{self._layouts}", [BASE, tar_bytes(entries)])
        self.push_image(built, f"{self.prefix}-{name}:{tag}")
        return built

    def tag(self, built: BuiltImage, name: str, tag: str) -> None:
        self.push_image(built, f"{self.prefix}-{name}:{tag}")

    def convert(self, name: str, tag: str = "1", **options: Any) -> ConvertResult:
        return convert_image(
            self.ref(name, tag),
            client=self.client,
            publisher=self.publisher,
            options=ConvertOptions(**options),
        )

    def flat(self, image_id: str) -> Path:
        return self.root / layout.flat_dir(Digest.parse(image_id))

    def layer(self, digest: str) -> Path:
        return self.root / layout.layer_dir(Digest.parse(digest))

    def origins(self, digest: str) -> list[str]:
        path = self.root / layout.layer_origin_file(Digest.parse(digest))
        origins: list[str] = json.loads(path.read_bytes())["origin"]
        return origins

    def schedule(self) -> list[dict[str, str]]:
        path = self.root / layout.REMOVE_SCHEDULE
        if not path.exists():
            return []
        images: list[dict[str, str]] = json.loads(path.read_bytes())["images"]
        return images

    def scheduled(self) -> list[str]:
        return [entry["imageId"] for entry in self.schedule()]

    def consistent(self, *, verify: bool = True) -> list[str]:
        """Our own consistency check, and what ``unpacked.verify`` finds: empty when all is well."""
        findings = verify_repository(self.publisher).findings if verify else ()
        return check_consistency(self.root) + [finding.message for finding in findings]

    def state(self) -> Snapshot:
        """The whole published tree (the publisher's private directory left out)."""
        kept: Snapshot = {}
        for path, node in snapshot(self.root).items():
            if path == b".unpacked" or path.startswith(b".unpacked/"):
                continue
            links = tuple(p for p in node.hardlinks if not p.startswith(b".unpacked/"))
            kept[path] = dataclasses.replace(node, hardlinks=links if len(links) > 1 else ())
        return kept

    def image_parts(self, built: BuiltImage, name: str, tag: str = "1") -> dict[str, object]:
        """Everything of one published image, with mtimes; ``origin.json`` files left out."""
        ref = self.ref(name, tag)
        parts: dict[str, object] = {
            "flat": snapshot(self.flat(built.config_digest), mtimes=True),
            "link": os.readlink(self.root / layout.public_link(ref)),
            "metadata": snapshot(self.root / layout.metadata_dir(ref), mtimes=True),
        }
        for digest in built.layer_digests:
            parts[digest] = {
                path: node
                for path, node in snapshot(self.layer(digest), mtimes=True).items()
                if path not in (b".metadata", b".metadata/origin.json")
            }
        return parts


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    # main() configures the root logger (handler and level) for the process: put it back,
    # so that one test's -v or -q does not change what the next one logs.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def lab(tmp_path: Path, registry: RegistryServer, push_image: Any) -> Iterator[Lab]:
    with RegistryClient() as client:
        yield Lab(tmp_path, registry, push_image, client)


def _ids(plan: Plan) -> list[str]:
    return [image.image_id for image in plan.images]


# --- moved tags -----------------------------------------------------------------------------


def test_a_moved_tag_schedules_the_old_image_which_gc_removes_after_the_grace_period(
    lab: Lab,
) -> None:
    old = lab.push("moved", "1", "old")
    lab.convert("moved")
    new = lab.push("moved", "1", "new")
    lab.convert("moved")
    shared, own_old, own_new = old.layer_digests[0], old.layer_digests[1], new.layer_digests[1]
    assert new.layer_digests[0] == shared
    assert lab.scheduled() == [old.config_digest]
    assert lab.schedule()[0]["reference"] == str(lab.ref("moved"))
    assert lab.origins(shared) == sorted([old.config_digest, new.config_digest])
    before = lab.state()
    new_parts = lab.image_parts(new, "moved")

    within = collect_garbage(lab.publisher, now=datetime.now(UTC))
    assert within.batches == ()
    assert [entry.image_id for entry in within.waiting] == [old.config_digest]
    assert lab.state() == before

    done = collect_garbage(lab.publisher, now=expired())
    assert _ids(done) == [old.config_digest]
    assert done.layers == (own_old,)
    assert not lab.flat(old.config_digest).exists()
    assert not lab.layer(own_old).exists()
    assert lab.origins(shared) == [new.config_digest]
    assert lab.origins(own_new) == [new.config_digest]
    assert lab.scheduled() == []
    assert lab.image_parts(new, "moved") == new_parts
    assert lab.consistent() == []

    again = collect_garbage(lab.publisher, now=expired())
    assert again.batches == ()


def test_an_image_another_tag_still_links_is_neither_scheduled_nor_removed(lab: Lab) -> None:
    kept = lab.push("two", "1", "kept")
    lab.tag(kept, "two", "2")
    lab.convert("two", "1")
    lab.convert("two", "2")
    lab.push("two", "1", "other")
    lab.convert("two", "1")
    assert lab.scheduled() == []
    before = lab.state()

    plan = collect_garbage(lab.publisher, now=expired())
    assert plan.batches == ()
    assert lab.state() == before
    assert lab.flat(kept.config_digest).is_dir()

    # Its last reference gone, the image is scheduled: the other tag left it earlier.
    unlinked = delete_image(lab.publisher, lab.ref("two", "2"), now=NOW)
    assert unlinked.scheduled == (kept.config_digest,)
    assert lab.schedule()[0]["reference"] == str(lab.ref("two", "2"))


def test_an_image_linked_again_before_the_grace_period_ends_stays(lab: Lab) -> None:
    first = lab.push("back", "1", "first")
    lab.convert("back")
    lab.push("back", "1", "second")
    lab.convert("back")
    assert lab.scheduled() == [first.config_digest]
    lab.tag(first, "back", "1")
    lab.convert("back")  # the tag moved back: convert takes the image off the schedule
    assert first.config_digest not in lab.scheduled()
    plan = collect_garbage(lab.publisher, now=expired())
    assert first.config_digest not in _ids(plan)
    assert lab.flat(first.config_digest).is_dir()
    assert lab.consistent() == []


def test_a_multiarch_link_keeps_its_image_and_delete_image_removes_it(lab: Lab) -> None:
    first = lab.push("multi", "1", "first")
    lab.convert("multi")
    ref = lab.ref("multi")
    link = layout.MULTIARCH / "amd64" / ref.public_name
    target = layout.relative_target(link, layout.flat_dir(Digest.parse(first.config_digest)))
    with lab.publisher.transaction() as tx:  # as a multi-platform conversion would
        tx.set_symlink(link, str(target))
        tx.set_symlink(layout.MULTIARCH / "x86_64", "amd64")
    second = lab.push("multi", "1", "second")
    lab.convert("multi")
    assert lab.scheduled() == [first.config_digest]  # convert looks at the plain link only

    plan = collect_garbage(lab.publisher, now=expired())
    assert plan.images == ()
    assert [entry.image_id for entry in plan.unscheduled] == [first.config_digest]
    assert lab.flat(first.config_digest).is_dir()
    assert lab.scheduled() == []

    unlinked = delete_image(lab.publisher, ref, now=NOW)
    assert unlinked.paths == (link, layout.public_link(ref), layout.metadata_dir(ref))
    assert unlinked.scheduled == tuple(sorted([first.config_digest, second.config_digest]))
    assert not os.path.lexists(lab.root / link)
    assert os.path.islink(lab.root / layout.MULTIARCH / "x86_64")
    done = collect_garbage(lab.publisher, now=expired())
    assert set(_ids(done)) == {first.config_digest, second.config_digest}
    assert lab.consistent() == []


def test_a_multi_platform_image_is_kept_whole_and_unlinked_whole(
    lab: Lab, sample_images: SampleImages
) -> None:
    multi = sample_images.multi_oci
    ref = parse(multi.ref(lab.registry))
    arm = Platform.parse("linux/arm64/v8")
    for options in (
        ConvertOptions(multiarch=True),
        ConvertOptions(platform=arm, public_link=False, multiarch=True),
    ):
        convert_image(ref, client=lab.client, publisher=lab.publisher, options=options)
    images = {m.platform: m.config_digest for m in multi.manifests}
    assert collect_garbage(lab.publisher, now=expired()).batches == ()
    assert lab.consistent() == []

    unlinked = delete_image(lab.publisher, ref, now=NOW)
    assert unlinked.paths == (
        layout.multiarch_link(DEFAULT_PLATFORM, ref),
        layout.multiarch_link(arm, ref),
        layout.public_link(ref),
        layout.multiarch_metadata_dir(arm, ref),
        layout.metadata_dir(ref),
    )
    assert set(unlinked.scheduled) == set(images.values())
    assert os.path.islink(lab.root / layout.MULTIARCH / "aarch64")  # aliases stay
    done = collect_garbage(lab.publisher, now=expired())
    assert set(_ids(done)) == set(images.values())
    assert not any(lab.flat(str(image)).exists() for image in images.values())
    assert lab.consistent(verify=False) == []


# --- max removals, batches, dry run --------------------------------------------------------


def _unlink_all(lab: Lab, name: str, count: int) -> list[BuiltImage]:
    """``count`` images published as name:0.., then deleted a second apart, before ``NOW``."""
    images = []
    for index in range(count):
        images.append(lab.push(name, str(index), f"{name}{index}"))
        lab.convert(name, str(index))
    for index in range(count):
        unlinked = NOW - timedelta(seconds=count - index)
        delete_image(lab.publisher, lab.ref(name, str(index)), now=unlinked)
    return images


def test_max_removals_caps_a_cycle_and_the_next_cycle_finishes(lab: Lab) -> None:
    live = lab.push("cap-live", "1", "live")
    lab.convert("cap-live")
    gone = _unlink_all(lab, "cap", 3)
    own = [image.layer_digests[1] for image in gone]
    ids = [image.config_digest for image in gone]

    # Units, oldest first: image 0, its layer, image 1, its layer, image 2, its layer.
    first = collect_garbage(lab.publisher, now=expired(), max_removals=3)
    assert _ids(first) == ids[:2]
    assert first.layers == (own[0],)
    assert [entry.image_id for entry in first.deferred] == [ids[2]]
    assert first.deferred_layers == (own[1],)
    assert not lab.flat(ids[0]).exists() and not lab.flat(ids[1]).exists()
    assert lab.flat(ids[2]).is_dir()
    assert not lab.layer(own[0]).exists()
    assert lab.origins(own[1]) == []  # left for the next cycle
    assert lab.scheduled() == [ids[2]]
    assert lab.consistent() == []

    second = collect_garbage(lab.publisher, now=expired(), max_removals=3)
    assert second.layers == (own[1], own[2])
    assert _ids(second) == [ids[2]]
    assert second.deferred == () and second.deferred_layers == ()
    assert not lab.flat(ids[2]).exists()
    assert not any(lab.layer(layer).exists() for layer in own)
    assert lab.origins(live.layer_digests[0]) == [live.config_digest]
    assert lab.scheduled() == []
    assert lab.consistent() == []


def _rig_schedule(lab: Lab, schedule: RemovalSchedule) -> None:
    """Write a schedule by hand: what an older tool or a lost update could leave."""
    with lab.publisher.transaction() as tx:
        tx.write_file(layout.REMOVE_SCHEDULE, schedule.to_bytes())


def _removed_on_disk(lab: Lab, before: Snapshot) -> tuple[set[str], set[str]]:
    after = lab.state()

    def fanout(top: bytes, state: Snapshot) -> set[str]:
        return {
            "sha256:" + path.split(b"/")[2].decode()
            for path in state
            if path.startswith(top + b"/") and path.count(b"/") == 2
        }

    flats = fanout(b".flat", before) - fanout(b".flat", after)
    layers = fanout(b".layers", before) - fanout(b".layers", after)
    return flats, layers


def test_the_dry_run_plan_is_exactly_what_the_sweep_then_does(lab: Lab) -> None:
    live = lab.push("dry-live", "1", "live")
    lab.convert("dry-live")
    gone = _unlink_all(lab, "dry", 4)
    waiting = lab.push("dry-wait", "1", "wait")
    lab.convert("dry-wait")
    orphan = lab.push("dry-orphan", "1", "orphan")
    lab.convert("dry-orphan")
    after = expired()
    delete_image(lab.publisher, lab.ref("dry-wait"), now=after)  # within its grace period
    delete_image(lab.publisher, lab.ref("dry-orphan"), now=NOW)
    schedule = RemovalSchedule.from_bytes((lab.root / layout.REMOVE_SCHEDULE).read_bytes())
    # The orphan loses its entry; the live image gets one it should not have.
    rigged = schedule.without([orphan.config_digest]).add(
        live.config_digest, "x/y:z", "2020-01-01T00:00:00Z"
    )
    _rig_schedule(lab, rigged)
    before = lab.state()

    dry = plan_garbage_collection(lab.publisher, now=after, max_removals=5, batch_size=2)
    assert lab.state() == before
    assert len(dry.batches) == 3
    assert dry.scheduled == (orphan.config_digest,)
    assert [entry.image_id for entry in dry.unscheduled] == [live.config_digest]
    assert [entry.image_id for entry in dry.waiting] == [waiting.config_digest]
    assert [entry.image_id for entry in dry.deferred] == [gone[3].config_digest]
    assert dry.deferred_layers == (gone[2].layer_digests[1],)

    done = collect_garbage(lab.publisher, now=after, max_removals=5, batch_size=2)
    assert plan_json(done) == plan_json(dry)
    assert done == dry

    flats, layers = _removed_on_disk(lab, before)
    assert flats == {image.image_id for image in dry.images if image.flat_tree}
    assert layers == set(dry.layers)
    last = {update.layer: list(update.origins) for update in dry.origins}  # the latest wins
    assert {layer: lab.origins(layer) for layer in last if layer not in layers} == {
        layer: origins for layer, origins in last.items() if layer not in layers
    }
    written = [batch.schedule for batch in dry.batches if batch.schedule is not None]
    assert (
        RemovalSchedule.from_bytes((lab.root / layout.REMOVE_SCHEDULE).read_bytes()) == written[-1]
    )
    assert sorted(lab.scheduled()) == sorted(
        [gone[3].config_digest, waiting.config_digest, orphan.config_digest]
    )
    assert lab.consistent() == []


def test_cli_garbage_collection_dry_run_json_matches_the_real_run(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    lab.push("cli-live", "1", "live")
    lab.convert("cli-live")
    gone = _unlink_all(lab, "cli", 2)
    spec = lab.publisher.spec
    # The CLI's clock is the real one: the entries (unlinked in the past) are expired for
    # any grace period shorter than their age; give one of a second.
    argv = ["garbage-collection", "--repo", spec, "--grace", "1s", "--json"]
    before = lab.state()

    assert main([*argv, "--dry-run"]) == EXIT_OK
    dry = json.loads(capsys.readouterr().out)
    assert lab.state() == before
    assert main(argv) == EXIT_OK
    done = json.loads(capsys.readouterr().out)
    assert dry.pop("now") <= done.pop("now")
    assert dry == done
    removed = [image["imageId"] for batch in done["batches"] for image in batch["images"]]
    assert removed == [image.config_digest for image in gone]
    flats, layers = _removed_on_disk(lab, before)
    assert flats == set(removed)
    assert layers == {layer for batch in done["batches"] for layer in batch["layers"]}

    assert main(["garbage-collection", "--repo", spec]) == EXIT_OK
    assert "removed 0 image(s) and 0 layer(s)" in capsys.readouterr().out


def test_cli_garbage_collection_refuses_bad_limits(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = lab.publisher.spec
    assert main(["garbage-collection", "--repo", spec, "--max-removals", "0"]) == 2
    for grace in ("-1s", "1w", "soon"):
        assert main(["garbage-collection", "--repo", spec, f"--grace={grace}"]) == 2
        assert f"invalid duration '{grace}'" in capsys.readouterr().err
    assert main(["loop", "--interval", "0s", "-"]) == 2  # a pause of zero stays refused
    assert "expected a positive number" in capsys.readouterr().err
    missing = lab.tmp / "missing"
    for command in (["garbage-collection"], ["delete-image", "x/y:1"]):
        assert main([*command, "--repo", f"dir:{missing}"]) == EXIT_INPUT
        assert "no such repository" in capsys.readouterr().err
    assert not missing.exists()


@pytest.mark.parametrize("grace", ["0s", "0.5s", "0"])
def test_cli_garbage_collection_with_a_grace_under_a_minute_removes_at_once_and_warns(
    lab: Lab, capsys: pytest.CaptureFixture[str], grace: str
) -> None:
    """Zero grace is an operator's choice (a scratch repository, an urgent removal)."""
    lab.push("zero-live", "1", "live")
    lab.convert("zero-live")
    gone = lab.push("zero", "1", "zero")
    lab.convert("zero")
    orphan = lab.push("zero-orphan", "1", "orphan")
    lab.convert("zero-orphan")
    # Unlinked a second ago: times are recorded to the second.
    delete_image(lab.publisher, lab.ref("zero"), now=datetime.now(UTC) - timedelta(seconds=1))
    (lab.root / layout.public_link(lab.ref("zero-orphan"))).unlink()
    shutil.rmtree(lab.root / layout.metadata_dir(lab.ref("zero-orphan")))
    argv = ["garbage-collection", "--repo", lab.publisher.spec, "--grace", grace, "--json"]

    assert main(argv) == EXIT_OK
    out, err = capsys.readouterr()
    assert f"grace period {grace.removesuffix('s')}s: images unlinked since less" in err
    done = json.loads(out)
    assert done["graceSeconds"] == float(grace.removesuffix("s"))
    removed = [image["imageId"] for batch in done["batches"] for image in batch["images"]]
    assert removed == [gone.config_digest]
    assert not lab.flat(gone.config_digest).exists()
    # An orphan found by this cycle is scheduled now and removed by the next one only.
    assert lab.scheduled() == [orphan.config_digest]
    assert lab.flat(orphan.config_digest).is_dir()
    assert main([*argv[:-2], "0", "--json"]) == EXIT_OK  # no wait, whatever the second
    assert not lab.flat(orphan.config_digest).exists()
    assert lab.consistent() == []


def test_unreadable_records_stop_gc_or_keep_their_layer(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    old = lab.push("broken", "1", "old")
    lab.convert("broken")
    new = lab.push("broken", "1", "new")  # moves the tag: "old" is scheduled
    lab.convert("broken")
    own = new.layer_digests[1]
    spec = lab.publisher.spec
    with lab.publisher.transaction() as tx:
        tx.write_file(layout.layer_origin_file(Digest.parse(own)), b"{not json")
    argv = ["garbage-collection", "--repo", spec, "--json"]
    assert main(argv) == EXIT_FAILURE
    report = json.loads(capsys.readouterr().out)
    assert report["problems"] == [f"layer {own}: origin.json unreadable; the layer is kept"]
    assert lab.layer(own).is_dir()

    # An image status it cannot read could be anything's: nothing is removed at all.
    status = layout.status_file(lab.ref("broken"))
    with lab.publisher.transaction() as tx:
        tx.write_file(status, b"[]")
    before = lab.state()
    with pytest.raises(PublishError, match=str(status)):
        collect_garbage(lab.publisher, now=expired())
    assert main(argv) == EXIT_PUBLISH
    assert str(status) in capsys.readouterr().err
    assert lab.state() == before
    assert lab.flat(old.config_digest).is_dir()


# --- delete-image ------------------------------------------------------------------------


def test_delete_image_then_gc_removes_everything_of_it_but_the_layers_a_live_image_shares(
    lab: Lab,
) -> None:
    live = lab.push("del-live", "1", "live")
    lab.convert("del-live")
    gone = lab.push("del", "1", "gone")
    lab.convert("del")
    ref = lab.ref("del")
    link, metadata = layout.public_link(ref), layout.metadata_dir(ref)
    live_parts = lab.image_parts(live, "del-live")

    unlinked = delete_image(lab.publisher, ref, now=NOW)
    assert unlinked.paths == (link, metadata)
    assert unlinked.scheduled == (gone.config_digest,)
    assert unlinked.still_used == ()
    assert not os.path.lexists(lab.root / link)
    assert not (lab.root / metadata).exists()
    assert lab.flat(gone.config_digest).is_dir()  # running jobs keep their tree
    assert lab.scheduled() == [gone.config_digest]
    assert lab.consistent() == []

    done = collect_garbage(lab.publisher, now=expired())
    assert _ids(done) == [gone.config_digest]
    assert done.layers == (gone.layer_digests[1],)
    assert not lab.flat(gone.config_digest).exists()
    assert not lab.layer(gone.layer_digests[1]).exists()
    assert lab.origins(live.layer_digests[0]) == [live.config_digest]
    assert lab.image_parts(live, "del-live") == live_parts
    assert lab.consistent() == []


def _convert_elsewhere(lab: Lab, name: str, tag: str) -> None:
    """Publish ``name:tag`` from another process, as a conversion running next to gc would."""
    code = "import sys; from unpacked.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = ["convert-single-image", str(lab.ref(name, tag)), "--repo", lab.publisher.spec]
    done = subprocess.run(
        [sys.executable, "-c", code, *argv],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == EXIT_OK, done.stderr


def test_an_image_published_by_another_process_between_batches_keeps_its_layer_and_link(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep plans every batch from one reading; later batches confirm under their lock.

    Between the first and the second batch another process publishes an image that
    uses the own layer of an image the second batch removes, and links again the image
    the third batch would remove. Both must survive; the rest goes as planned.
    """
    gone = _unlink_all(lab, "race", 3)
    own = gone[1].layer_digests[1]
    layers = [BASE, tar_bytes([T.file("own-race1", b"race1")]), tar_bytes([T.file("x", b"x")])]
    user = build_image(lab.tmp / "race-user", layers)
    lab.push_image(user, f"{lab.prefix}-race-user:1")
    assert user.layer_digests[1] == own
    dry = plan_garbage_collection(lab.publisher, now=expired(), batch_size=2)
    assert [b.layers for b in dry.batches][1] == (own,)

    commits: list[Batch] = []
    committed = Confirmer.committed

    def meanwhile(self: Confirmer, batch: Batch) -> None:
        committed(self, batch)
        commits.append(batch)
        if len(commits) == 1:  # after the first commit, before the second lock
            _convert_elsewhere(lab, "race-user", "1")
            _convert_elsewhere(lab, "race", "2")  # gone[2] is linked again

    monkeypatch.setattr(Confirmer, "committed", meanwhile)
    done = collect_garbage(lab.publisher, now=expired(), batch_size=2)

    assert _ids(done) == [gone[0].config_digest, gone[1].config_digest]
    assert done.layers == (gone[0].layer_digests[1],)
    assert lab.layer(own).is_dir()
    assert lab.origins(own) == [user.config_digest]
    assert lab.flat(gone[2].config_digest).is_dir()
    assert gone[2].config_digest not in lab.scheduled()
    assert lab.consistent() == []


def test_delete_image_of_an_image_published_without_flat_tree(lab: Lab) -> None:
    layers_only = lab.push("skip", "1", "skip")
    lab.convert("skip", skip_flat=True)
    assert not lab.flat(layers_only.config_digest).exists()
    plan = collect_garbage(lab.publisher, now=expired())
    assert plan.batches == ()  # its status keeps it live

    delete_image(lab.publisher, lab.ref("skip"), now=NOW)
    done = collect_garbage(lab.publisher, now=expired())
    assert [(image.image_id, image.flat_tree) for image in done.images] == [
        (layers_only.config_digest, False)
    ]
    assert set(done.layers) == set(layers_only.layer_digests)
    assert not any(lab.layer(layer).exists() for layer in layers_only.layer_digests)


def test_cli_delete_image(lab: Lab, capsys: pytest.CaptureFixture[str]) -> None:
    built = lab.push("cli-del", "1", "x")
    lab.convert("cli-del")
    spec = lab.publisher.spec
    ref = str(lab.ref("cli-del"))
    assert main(["delete-image", ref, "--repo", spec, "--json"]) == EXIT_OK
    result = json.loads(capsys.readouterr().out)
    assert result == {
        "reference": lab.ref("cli-del").public_name,
        "removed": [lab.ref("cli-del").public_name, f".metadata/{lab.ref('cli-del').public_name}"],
        "scheduled": [built.config_digest],
        "stillUsed": [],
    }
    # Unknown now: exit 3, and the message names the reference.
    assert main(["delete-image", ref, "--repo", spec]) == EXIT_INPUT
    assert lab.ref("cli-del").public_name in capsys.readouterr().err
    assert main(["delete-image", f"{lab.registry.host}/x/y:*", "--repo", spec]) == EXIT_INPUT


# --- prune ------------------------------------------------------------------------------------


@pytest.fixture
def pruned(lab: Lab) -> tuple[Lab, dict[str, BuiltImage], Path]:
    """a:1, a:2, b:1, w:1.0, w:1.1, w:2.0 published; the wish list names a:1 and w:1.*."""
    images = {}
    for name, tag in (("a", "1"), ("a", "2"), ("b", "1"), ("w", "1.0"), ("w", "1.1"), ("w", "2.0")):
        images[f"{name}:{tag}"] = lab.push(f"p{name}", tag, f"{name}{tag}")
        lab.convert(f"p{name}", tag)
    wishlist = lab.tmp / "wishlist.txt"
    wishlist.write_text(f"{lab.ref('pa', '1')}\n{lab.ref('pw', '1.*')}\n")
    return lab, images, wishlist


def _wishes(path: Path) -> Any:
    return loads(path.read_text(), source=str(path)).wishes


def _names(lab: Lab, *pairs: str) -> list[str]:
    return sorted(
        lab.ref(f"p{pair.split(':')[0]}", pair.split(":")[1]).public_name for pair in pairs
    )


def test_prune_unlinks_what_the_wish_list_no_longer_names(
    pruned: tuple[Lab, dict[str, BuiltImage], Path],
) -> None:
    lab, images, wishlist = pruned
    wishes = _wishes(wishlist)

    # A tag the registry no longer lists goes too (scripted listing: 1.1 is gone).
    before = lab.state()
    dry = plan_prune(lab.publisher, wishes, list_tags=lambda ref: ["1.0", "2.0"], now=NOW)
    assert sorted(u.reference for u in dry.unlink.unlinked) == _names(
        lab, "a:2", "b:1", "w:1.1", "w:2.0"
    )
    assert sorted(dry.wanted) == _names(lab, "a:1", "w:1.0")
    assert lab.state() == before

    done = prune(lab.publisher, wishes, list_tags=lab.client.list_tags, now=NOW)
    assert not done.failed
    assert sorted(u.reference for u in done.unlink.unlinked) == _names(lab, "a:2", "b:1", "w:2.0")
    assert sorted(done.wanted) == _names(lab, "a:1", "w:1.0", "w:1.1")
    gone = {images[key].config_digest for key in ("a:2", "b:1", "w:2.0")}
    assert set(lab.scheduled()) == gone
    for key in ("a:2", "b:1", "w:2.0"):
        ref = lab.ref(f"p{key.split(':')[0]}", key.split(":")[1])
        assert not os.path.lexists(lab.root / layout.public_link(ref))
    collect_garbage(lab.publisher, now=expired())
    assert {i for i in gone if lab.flat(i).exists()} == set()
    for key in ("a:1", "w:1.0", "w:1.1"):
        assert lab.flat(images[key].config_digest).is_dir()
    assert lab.consistent() == []


def test_prune_keeps_what_a_wildcard_could_match_when_its_registry_is_down(
    pruned: tuple[Lab, dict[str, BuiltImage], Path],
) -> None:
    lab, _, wishlist = pruned
    # The registry's endpoint stops answering: connections are refused, at once.
    down = RegistryOptions(
        retries=0, mirrors={lab.registry.host: f"http://127.0.0.1:{free_port()}"}
    )
    with RegistryClient(down) as client:
        done = prune(lab.publisher, _wishes(wishlist), list_tags=client.list_tags, now=NOW)
    assert done.failed
    [failure] = done.failures
    assert failure.wish.text == str(lab.ref("pw", "1.*"))
    assert sorted(failure.kept) == _names(lab, "w:1.0", "w:1.1")
    # w:2.0 is not something w:1.* could match: no wish names it any more.
    assert sorted(u.reference for u in done.unlink.unlinked) == _names(lab, "a:2", "b:1", "w:2.0")
    for key in ("a:1", "w:1.0", "w:1.1"):
        ref = lab.ref(f"p{key.split(':')[0]}", key.split(":")[1])
        assert os.path.islink(lab.root / layout.public_link(ref))


class _DeniedRegistry:
    """An HTTP server on 127.0.0.1 that says "repository unknown" to everything."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b'{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known"}]}'
                self.send_response(404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> _DeniedRegistry:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def test_cli_prune(
    pruned: tuple[Lab, dict[str, BuiltImage], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    lab, _, wishlist = pruned
    spec = lab.publisher.spec
    argv = ["prune", "--wishlist", str(wishlist), "--repo", spec, "--json"]
    before = lab.state()

    with _DeniedRegistry() as denied:
        mirror = ["--mirror", f"{lab.registry.host}={denied.url}"]
        assert main([*argv, *mirror, "--dry-run"]) == EXIT_FAILURE
        failing = json.loads(capsys.readouterr().out)
    assert lab.state() == before
    assert failing["failed"] is True
    assert sorted(failing["listingFailures"][0]["kept"]) == _names(lab, "w:1.0", "w:1.1")
    assert "repository name not known" in failing["listingFailures"][0]["error"]

    assert main([*argv, "--dry-run"]) == EXIT_OK
    dry = json.loads(capsys.readouterr().out)
    assert lab.state() == before
    assert main(argv) == EXIT_OK
    done = json.loads(capsys.readouterr().out)
    assert done == dry
    assert sorted(u["reference"] for u in done["unlinked"]) == _names(lab, "a:2", "b:1", "w:2.0")
    assert main(argv) == EXIT_OK  # nothing left to prune
    assert json.loads(capsys.readouterr().out)["unlinked"] == []


def test_prune_refuses_a_wish_list_without_images(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    lab.push("empty", "1", "x")
    lab.convert("empty")
    wishlist = lab.tmp / "empty.txt"
    wishlist.write_text("# nothing\n")
    argv = ["prune", "--wishlist", str(wishlist), "--repo", lab.publisher.spec]
    assert main(argv) == EXIT_INPUT
    assert "names no images" in capsys.readouterr().err
    assert os.path.islink(lab.root / layout.public_link(lab.ref("empty")))


def test_gc_with_a_wish_list_keeps_a_deleted_image_the_list_still_names(lab: Lab) -> None:
    wanted = lab.push("wish", "1", "wanted")
    lab.convert("wish")
    moved = lab.push("wish", "2", "first")
    lab.convert("wish", "2")
    lab.push("wish", "2", "second")
    lab.convert("wish", "2")  # a moved tag: the old image goes, wish list or not
    delete_image(lab.publisher, lab.ref("wish"), now=NOW)
    wished = [lab.ref("wish", "*")]

    plan = collect_garbage(lab.publisher, now=expired(), wished=wished)
    assert _ids(plan) == [moved.config_digest]
    assert [entry.image_id for entry in plan.kept] == [wanted.config_digest]
    assert lab.flat(wanted.config_digest).is_dir()
    assert lab.scheduled() == [wanted.config_digest]

    lab.convert("wish")  # linked again: taken off the schedule by convert
    assert lab.scheduled() == []
    assert lab.consistent() == []


# --- read-only directories and unreadable files ----------------------------------------------

AWKWARD = [
    T.dir("ro", mode=0o555),
    T.dir("ro/sub", mode=0o555),
    T.file("ro/sub/file", b"read only\n", mode=0o444),
    T.file("ro/secret", b"nobody may read\n", mode=0o000),
    T.file("secret", b"nobody may read\n", mode=0o000),
]


def test_images_with_read_only_directories_and_unreadable_files_are_removed(lab: Lab) -> None:
    built = lab.push("awkward", "1", AWKWARD)
    lab.convert("awkward")
    trees = image_trees(lab.root, built.config_digest, list(built.layer_digests[1:]))
    hardened = harden(*trees)
    own = lab.layer(built.layer_digests[1])
    assert stat.S_IMODE(os.lstat(own / "layerfs/ro/sub").st_mode) == 0o555
    assert stat.S_IMODE(os.lstat(own / "layerfs").st_mode) == 0o555
    assert stat.S_IMODE(os.lstat(lab.flat(built.config_digest) / "secret").st_mode) == 0o000
    assert len(hardened) == 9  # flat tree: ro, ro/sub, ro/secret, secret; layer: those, layerfs
    delete_image(lab.publisher, lab.ref("awkward"), now=NOW)
    done = collect_garbage(lab.publisher, now=expired())
    assert _ids(done) == [built.config_digest]
    assert set(done.layers) == set(built.layer_digests)  # no live image shares the base
    assert not any(tree.exists() for tree in trees)
    assert os.listdir(lab.root / ".unpacked" / "transactions") == []


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid 65534 needs root")
def test_images_with_read_only_directories_are_removed_unprivileged(lab: Lab) -> None:
    # As root, permission bits do not matter; only an unprivileged owner shows that the
    # removal grants itself access as it goes.
    built = lab.push("awkward-nobody", "1", AWKWARD)
    with tempfile.TemporaryDirectory(prefix="unpacked-gc-") as base:
        os.chmod(base, 0o755)
        home = Path(base) / "home"
        home.mkdir()
        os.chown(home, 65534, 65534)
        root = home / "repo"
        env = {"PATH": os.environ["PATH"], "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"}
        done = subprocess.run(
            [
                sys.executable,
                str(WORKER),
                "awkward",
                str(root),
                str(lab.ref("awkward-nobody")),
                NOW.isoformat(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env=env,
            cwd=home,
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["uid"] == 65534
        assert report["published"] is True
        # flat tree: ro, ro/sub, ro/secret, secret; own layer: the same and layerfs; base: layerfs
        assert len(report["hardened"]) == 10
        assert report["removedImages"] == [built.config_digest]
        assert sorted(report["removedLayers"]) == sorted(built.layer_digests)
        assert os.stat(root).st_uid == 65534
        assert sorted(os.listdir(root / ".flat")) == [".cvmfscatalog", built.config_digest[7:9]]
        assert os.listdir(root / ".flat" / built.config_digest[7:9]) == [".cvmfscatalog"]
        assert os.listdir(root / ".unpacked" / "transactions") == []


# --- the planner on its own ---------------------------------------------------------------

START = datetime(2024, 1, 1, tzinfo=UTC)


def _id(number: int) -> str:
    return f"sha256:{number:064x}"


def _state(
    *,
    links: Sequence[str] = (),
    published: Sequence[tuple[str, str]] = (),
    schedule: Sequence[tuple[str, str, datetime]] = (),
    flats: Sequence[str] = (),
    layers: dict[str, frozenset[str] | None] | None = None,
    live_layers: Sequence[str] = (),
) -> RepositoryState:
    """A snapshot built by hand; ``published`` pairs are (reference, image id)."""
    refs = References(
        links={P(f"r.io/linked:{n}"): image for n, image in enumerate(links)},
        published=tuple(
            PublishedImage(parse(ref), layout.metadata_dir(parse(ref)), image)
            for ref, image in published
        ),
        live_layers=frozenset(live_layers),
        schedule=RemovalSchedule(
            tuple(ScheduledRemoval(image, ref, format_time(when)) for image, ref, when in schedule)
        ),
    )
    return RepositoryState(refs, frozenset(flats), layers or {})


def test_plan_drops_ids_that_exist_nowhere_and_keeps_live_and_unreadable_layers() -> None:
    live, nowhere = _id(1), _id(2)
    layers: dict[str, frozenset[str] | None] = {
        _id(10): frozenset({live, nowhere}),
        _id(11): frozenset({nowhere}),
        _id(12): frozenset({nowhere}),
        _id(13): None,
        _id(14): frozenset(),
    }
    state = _state(links=[live], flats=[live], layers=layers, live_layers=[_id(12)])
    plan = plan_collection(state, now=START)
    [batch] = plan.batches
    assert batch.layers == (_id(11), _id(14))
    assert batch.origins == (
        OriginUpdate(_id(10), (live,)),
        OriginUpdate(_id(12), ()),  # emptied, but a live manifest lists it: it stays
    )
    assert batch.images == () and batch.schedule is None
    assert plan.problems == (f"layer {_id(13)}: origin.json unreadable; the layer is kept",)


def test_plan_expiry_orphans_and_images_linked_again() -> None:
    old, young, back, orphan = _id(1), _id(2), _id(3), _id(4)
    state = _state(
        links=[back],
        schedule=[
            (old, "r.io/a:1", START),
            (young, "r.io/a:2", START + timedelta(seconds=1)),
            (back, "r.io/a:3", START),
        ],
        flats=[old, young, back, orphan],
        layers={_id(10): frozenset({old, young}), _id(11): frozenset({old})},
    )
    now = START + DEFAULT_GRACE  # exactly the end of old's grace period
    plan = plan_collection(state, now=now)
    [batch] = plan.batches
    assert batch.images == (ImageRemoval(old, "r.io/a:1", format_time(START), True),)
    assert batch.layers == (_id(11),)
    assert batch.origins == (OriginUpdate(_id(10), (young,)),)
    assert batch.scheduled == (orphan,)
    assert [entry.image_id for entry in batch.unscheduled] == [back]
    assert batch.schedule == RemovalSchedule(
        (
            ScheduledRemoval(young, "r.io/a:2", format_time(START + timedelta(seconds=1))),
            ScheduledRemoval(orphan, ORPHAN, format_time(now)),
        )
    )
    assert [entry.image_id for entry in plan.waiting] == [young]


def test_plan_keeps_an_expired_image_whose_reference_is_wished_and_unpublished() -> None:
    deleted, moved, current = _id(1), _id(2), _id(3)
    state = _state(
        published=[("r.io/app:2", current)],
        schedule=[(deleted, "r.io/app:1", START), (moved, "r.io/app:2", START)],
        flats=[deleted, moved, current],
    )
    plan = plan_collection(state, now=START + DEFAULT_GRACE, wished=[parse("r.io/app:*")])
    assert [entry.image_id for entry in plan.kept] == [deleted]
    assert [image.image_id for image in plan.images] == [moved]
    unwished = plan_collection(state, now=START + DEFAULT_GRACE, wished=[parse("r.io/other")])
    assert {image.image_id for image in unwished.images} == {deleted, moved}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"now": datetime(2024, 1, 1)}, "time zone"),
        ({"grace": timedelta(seconds=-1)}, "must not be negative"),
        ({"max_removals": 0}, "at least 1"),
        ({"batch_size": 0}, "at least 1"),
    ],
)
def test_plan_refuses_bad_limits(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_collection(_state(), **{"now": START, **options})


IMAGES = [_id(n) for n in range(1, 7)]
LAYERS = [_id(n) for n in range(100, 106)]


@st.composite
def states(draw: st.DrawFn) -> RepositoryState:
    scheduled = draw(st.lists(st.sampled_from(IMAGES), unique=True, max_size=5))
    layer_names = draw(st.sets(st.sampled_from(LAYERS)))
    origins = st.frozensets(st.sampled_from([*IMAGES, _id(99)]), max_size=4)
    return _state(
        links=draw(st.lists(st.sampled_from(IMAGES), max_size=2)),
        published=[
            (f"r.io/p:{n}", image)
            for n, image in enumerate(draw(st.lists(st.sampled_from(IMAGES), max_size=2)))
        ],
        schedule=[
            (image, f"r.io/s:{n}", START + timedelta(days=draw(st.integers(0, 9))))
            for n, image in enumerate(scheduled)
        ],
        flats=sorted(draw(st.sets(st.sampled_from(IMAGES)))),
        layers={
            layer: draw(st.one_of(origins, origins, st.none())) for layer in sorted(layer_names)
        },
        live_layers=sorted(draw(st.sets(st.sampled_from(LAYERS), max_size=2))),
    )


def _execute(state: RepositoryState, batch: Batch) -> RepositoryState:
    """What a committed batch leaves (the transaction's effect, without a file system)."""
    layers = dict(state.layers)
    for update in batch.origins:
        layers[update.layer] = frozenset(update.origins)
    for layer in batch.layers:
        del layers[layer]
    refs = state.references
    if batch.schedule is not None:
        refs = dataclasses.replace(refs, schedule=batch.schedule)
    flats = state.flat_trees - {image.image_id for image in batch.images}
    return RepositoryState(refs, flats, layers)


def _check_batch(before: RepositoryState, batch: Batch, now: datetime) -> None:
    refs = before.references
    live = refs.live_images()
    removed = {image.image_id for image in batch.images}
    assert not removed & live
    assert {u.layer for u in batch.origins}.isdisjoint(batch.layers)
    for layer in batch.layers:
        assert layer not in refs.live_layers
        assert before.layers[layer] is not None
    for update in batch.origins:
        assert before.layers[update.layer] is not None
    waiting = {e.image_id for e in refs.schedule.entries if e.image_id not in removed}
    for layer in batch.layers:
        assert not (before.layers[layer] or frozenset()) & waiting & refs.schedule.image_ids()
    after = _execute(before, batch)
    exists = after.references.live_images() | after.references.schedule.image_ids()
    exists |= after.flat_trees
    for layer, ids in after.layers.items():
        assert ids is None or ids <= exists, f"{layer} names an image that exists nowhere"
    assert after.flat_trees <= exists


@given(states(), st.one_of(st.none(), st.integers(1, 8)), st.integers(1, 3))
@settings(max_examples=300, deadline=None)
def test_a_plan_carried_out_batch_by_batch_is_the_plan(
    state: RepositoryState, max_removals: int | None, batch_size: int
) -> None:
    """The sweep's loop on a simulated repository: the dry run's batches, and only safe ones."""
    now = START + DEFAULT_GRACE + timedelta(days=4, hours=12)
    plan = plan_collection(state, now=now, max_removals=max_removals, batch_size=batch_size)
    done: list[Batch] = []
    budget, current = max_removals, state
    while True:
        again = plan_collection(current, now=now, max_removals=budget, batch_size=batch_size)
        if not again.batches:
            break
        _check_batch(current, again.batches[0], now)
        current = _execute(current, again.batches[0])
        done.append(again.batches[0])
        if budget is not None:
            budget -= again.batches[0].removals
        if len(again.batches) == 1 or budget == 0:
            break
    assert tuple(done) == plan.batches
    assert sum(batch.removals for batch in done) <= (max_removals or 10**6)
    if max_removals is None:  # a complete cycle leaves nothing for the next one
        assert plan_collection(current, now=now).batches == ()
