"""The ``dir:`` publisher, one promise of the contract (``publish/_base.py``) at a time."""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import pytest
from publish_helpers import (
    Worker,
    areas,
    change_everything,
    interpreter_for_others,
    populate,
    state,
    watch_swaps,
)

from support.tree import assert_trees_equal
from unpacked.errors import ConfigError, PublishError
from unpacked.publish import Capabilities, Publisher, WhiteoutForm, open_publisher

P = PurePosixPath


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "repo"


@pytest.fixture
def publisher(root: Path) -> Publisher:
    publisher = open_publisher(f"dir:{root}")
    with publisher.transaction() as transaction:
        populate(transaction)
    return publisher


# --- open_publisher ----------------------------------------------------------------


def test_open_publisher_creates_the_root_and_normalises_the_spec(tmp_path: Path) -> None:
    publisher = open_publisher(f"dir:{tmp_path}/sub/../repo")
    assert publisher.root == tmp_path / "repo"
    assert publisher.spec == f"dir:{tmp_path / 'repo'}"
    assert stat.S_IMODE(os.stat(tmp_path / "repo").st_mode) == 0o755
    assert open_publisher(f"dir:{tmp_path / 'repo'}").root == publisher.root


@pytest.mark.parametrize(
    "spec", ["/srv/unpacked", "relative/path", "cvmfs:unpacked.cern.ch", "DIR:/srv", ""]
)
def test_open_publisher_refuses_unknown_backends_and_bare_paths(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        open_publisher(spec)
    assert repr(spec) in str(info.value)
    assert "dir:<path>" in str(info.value)


def test_open_publisher_needs_the_parent_and_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"parent directory .*missing.* does not exist"):
        open_publisher(f"dir:{tmp_path}/missing/repo")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ConfigError, match="file: exists and is not a directory"):
        open_publisher(f"dir:{tmp_path}/file")
    with pytest.raises(ConfigError, match="needs a path"):
        open_publisher("dir:")


# --- scope: visible on success only ------------------------------------------------------


# --- a failing commit is rolled back ----------------------------------------------------------


def test_a_commit_failing_midway_restores_the_tree(publisher: Publisher, root: Path) -> None:
    with pytest.raises(PublishError) as info, publisher.transaction() as transaction:
        change_everything(transaction)
        transaction.set_symlink(P("blocker/link"), "../reg")
        # A foreign writer (contract N5) puts a file where the link needs a directory:
        # the commit fails after trees, files and one link have been placed.
        (root / "blocker").write_bytes(b"in the way")
        expected = state(root)
    message = str(info.value)
    assert "blocker/link" in message
    assert "restored" in message
    assert_trees_equal(expected, state(root))
    assert areas(root) == []


class FlakyRename:
    """``os.rename`` that fails from its ``first_failure``-th call on (``until`` calls later)."""

    def __init__(self, first_failure: int, error: BaseException, until: int | None = None) -> None:
        self.calls = 0
        self.first_failure = first_failure
        self.last_failure = first_failure if until is None else until
        self.error = error
        self.real: Callable[..., None] = os.rename

    def __call__(self, *args: object, **kwargs: object) -> None:
        self.calls += 1
        if self.first_failure <= self.calls <= self.last_failure:
            raise self.error
        self.real(*args, **kwargs)


def test_an_interrupt_during_the_commit_restores_the_tree(
    publisher: Publisher, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = state(root)
    interrupt = KeyboardInterrupt()
    # Rename 1 makes the journal appear; 6 is the fifth step of the commit.
    monkeypatch.setattr(os, "rename", FlakyRename(6, interrupt))
    with pytest.raises(KeyboardInterrupt) as info, publisher.transaction() as transaction:
        change_everything(transaction)
    assert info.value is interrupt
    monkeypatch.undo()
    assert_trees_equal(before, state(root))
    assert areas(root) == []


def test_a_failed_rollback_is_completed_by_the_next_transaction(
    publisher: Publisher, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    twin = open_publisher(f"dir:{tmp_path / 'twin'}")
    with twin.transaction() as transaction:
        populate(transaction)
    with twin.transaction() as transaction:
        change_everything(transaction)
    before = state(root)

    eio = OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(os, "rename", FlakyRename(5, eio, until=10**6))
    with pytest.raises(PublishError) as info, publisher.transaction() as transaction:
        change_everything(transaction)
    monkeypatch.undo()
    assert "rolling it back failed too" in str(info.value)
    assert "journal.json" in str(info.value)
    half = state(root)
    assert half != before
    assert half != state(twin.root)

    with publisher.transaction():
        pass
    assert_trees_equal(state(twin.root), state(root))
    assert areas(root) == []


def test_an_unreadable_journal_stops_every_transaction(publisher: Publisher, root: Path) -> None:
    area = root / ".unpacked/transactions/20240101T000000-1-cafe"
    (area / "new").mkdir(parents=True)
    (area / "journal.json").write_text(json.dumps({"format": 1, "steps": [{"op": "explode"}]}))
    for _ in range(2):  # the lock is released after the failure, the journal kept
        with (
            pytest.raises(PublishError, match=f"{area}/journal.json.*explode"),
            publisher.transaction(lock_timeout=0),
        ):
            pass
    assert (area / "journal.json").exists()


def test_an_abandoned_area_is_discarded(publisher: Publisher, root: Path) -> None:
    before = state(root)
    area = root / ".unpacked/transactions/20240101T000000-1-beef"
    (area / "new/7").mkdir(parents=True)
    (area / "new/7/file").write_bytes(b"staged by a process that died")
    with publisher.transaction():
        pass
    assert areas(root) == []
    assert_trees_equal(before, state(root))


# --- new_dir ----------------------------------------------------------------------------


def test_new_dir_gives_an_empty_writable_directory_on_the_same_file_system(
    publisher: Publisher, root: Path
) -> None:
    with publisher.transaction() as transaction:
        fresh = transaction.new_dir(P(".flat/cc/three"))
        assert fresh.is_dir()
        assert list(fresh.iterdir()) == []
        assert os.stat(fresh).st_dev == os.stat(root).st_dev
        assert os.access(fresh, os.W_OK)


# --- paths ------------------------------------------------------------------------------


# --- what a transaction records ----------------------------------------------------------


# --- removing awkward trees -------------------------------------------------------------------


def awkward(directory: Path, outside: Path) -> None:
    (directory / "ro").mkdir()
    (directory / "ro" / "locked").write_bytes(b"mode 000")
    os.chmod(directory / "ro" / "locked", 0o000)
    (directory / "ro" / "sealed").mkdir()
    (directory / "ro" / "sealed" / "inside").write_bytes(b"")
    os.symlink(outside, directory / "ro" / "out")
    os.symlink(outside / "precious", directory / "ro" / "out-file")
    os.chmod(directory / "ro" / "sealed", 0o000)
    os.chmod(directory / "ro", 0o555)


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "outside"
    directory.mkdir()
    (directory / "precious").write_bytes(b"keep me")
    yield directory
    assert (directory / "precious").read_bytes() == b"keep me"


def test_trees_with_read_only_and_inaccessible_entries_are_removed(
    publisher: Publisher, root: Path, outside: Path
) -> None:
    with publisher.transaction() as transaction:
        awkward(transaction.new_dir(P("awkward")), outside)
    assert stat.S_IMODE(os.lstat(root / "awkward/ro").st_mode) == 0o555
    with publisher.transaction() as transaction:
        transaction.remove(P("awkward"))
    assert not os.path.lexists(root / "awkward")
    with pytest.raises(RuntimeError), publisher.transaction() as transaction:
        awkward(transaction.new_dir(P("awkward")), outside)
        raise RuntimeError("abandon the staged tree")
    assert areas(root) == []


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid 65534 needs root")


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    # pytest's temporary directories are private to root; uid 65534 needs its own way in.
    with tempfile.TemporaryDirectory(prefix="unpacked-publish-") as base:
        os.chmod(base, 0o755)
        home = Path(base) / "home"
        home.mkdir()
        os.chown(home, 65534, 65534)
        yield home


@needs_root
def test_trees_with_read_only_and_inaccessible_entries_are_removed_unprivileged(
    nobody_dir: Path,
) -> None:
    # As root, permission bits do not matter; only an unprivileged owner shows that the
    # removal grants itself access as it goes.
    interpreter = interpreter_for_others()
    if interpreter is None:
        pytest.skip("no Python >= 3.11 that uid 65534 may run")
    root = nobody_dir / "repo"
    with Worker(
        "awkward", str(root), user=65534, cwd=nobody_dir, interpreter=interpreter
    ) as worker:
        report = json.loads(worker.line(timeout=60))
        assert worker.finish() == 0, worker.stderr()
    assert report == {
        "uid": 65534,
        "published": True,
        "removed": True,
        "abandoned": True,
        "areas": [],
    }


# --- atomic swaps -------------------------------------------------------------------------------


def test_the_swap_watcher_does_see_a_non_atomic_swap(publisher: Publisher, root: Path) -> None:
    # Control for the test above: unlink-then-create must be caught, or the watcher is blind.
    (root / "data").write_bytes(b"a")

    def naive(index: int) -> None:
        for _ in range(20):
            os.unlink(root / "reg/img:1")
            os.symlink("ab"[index % 2], root / "reg/img:1")

    report = watch_swaps(root, naive, until_missing=True)
    assert isinstance(report["missing"], int)
    assert report["missing"] > 0


# --- capabilities (C1-C3) ---------------------------------------------------------------


def test_dir_capabilities_follow_the_repository_file_system(root: Path) -> None:
    publisher = open_publisher(f"dir:{root}")
    caps = publisher.capabilities
    expected = WhiteoutForm.OVERLAY if os.geteuid() == 0 else WhiteoutForm.AUFS
    assert caps == Capabilities(
        whiteouts=expected, hardlinks_across_directories=True, scratch_on_tree_filesystem=True
    )
    with publisher.transaction() as transaction:
        assert transaction.capabilities == caps
    # The probe leaves nothing behind in the staging area.
    assert areas(root) == []


def test_dir_whiteouts_on_a_file_system_without_trusted_xattrs(
    ramfs: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if os.geteuid() != 0:
        pytest.skip("unprivileged: the form is AUFS without a probe")
    publisher = open_publisher(f"dir:{ramfs / 'repo'}")
    assert publisher.capabilities.whiteouts is WhiteoutForm.AUFS
    assert "cannot create overlay whiteouts here" in caplog.text
    assert "kept as .wh. files" in caplog.text
