"""The ``dir:`` publisher, one promise of the contract (``publish/_base.py``) at a time."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import pytest
from publish_helpers import Worker, areas, interpreter_for_others, state

from support.tree import assert_trees_equal
from unpacked.errors import ConfigError, PublishError
from unpacked.publish import Capabilities, Publisher, Transaction, WhiteoutForm, open_publisher

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


def populate(transaction: Transaction) -> None:
    """The state most tests start from: an image, its metadata and link, a tree to remove."""
    tree = transaction.new_dir(P(".flat/aa/one"))
    (tree / "file").write_bytes(b"one")
    transaction.write_file(P(".metadata/x/status.json"), b"old status")
    transaction.set_symlink(P("reg/img:1"), "../.flat/aa/one")
    doomed = transaction.new_dir(P("doomed"))
    (doomed / "inner").mkdir()
    (doomed / "inner" / "file").write_bytes(b"doomed")
    transaction.new_dir(P("dirfile")).joinpath("content").write_bytes(b"a directory")


def change_everything(transaction: Transaction) -> None:
    """One change of every kind against ``populate``'s state."""
    tree = transaction.new_dir(P(".flat/bb/two"))
    (tree / "file").write_bytes(b"two")
    transaction.write_file(P(".metadata/x/status.json"), b"new status")
    transaction.write_file(P(".metadata/y/status.json"), b"brand new")
    transaction.remove(P("dirfile"))
    transaction.write_file(P("dirfile"), b"a file now")
    transaction.set_symlink(P("reg/img:1"), "../.flat/bb/two")
    transaction.set_symlink(P("reg/img:2"), "../.flat/bb/two")
    transaction.remove(P("doomed"))


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


def test_changes_are_visible_only_after_the_commit(publisher: Publisher, root: Path) -> None:
    before = state(root)
    with publisher.transaction() as transaction:
        change_everything(transaction)
        assert_trees_equal(before, state(root))
        assert transaction.exists(P(".flat/bb/two/file"))
        assert transaction.exists(P(".metadata/y"))
        assert not transaction.exists(P("doomed/inner"))
        assert transaction.read_path(P(".metadata/x/status.json")).read_bytes() == b"old status"

    assert (root / ".flat/bb/two/file").read_bytes() == b"two"
    assert (root / ".metadata/x/status.json").read_bytes() == b"new status"
    assert (root / ".metadata/y/status.json").read_bytes() == b"brand new"
    assert (root / "dirfile").read_bytes() == b"a file now"
    assert os.readlink(root / "reg/img:1") == "../.flat/bb/two"
    assert os.readlink(root / "reg/img:2") == "../.flat/bb/two"
    assert not os.path.lexists(root / "doomed")
    assert (root / ".flat/aa/one/file").read_bytes() == b"one"
    assert stat.S_IMODE(os.stat(root / ".metadata/y").st_mode) == 0o755
    assert stat.S_IMODE(os.stat(root / ".metadata/y/status.json").st_mode) == 0o644
    assert areas(root) == []


@pytest.mark.parametrize(
    "error",
    [RuntimeError("boom"), PublishError("no"), KeyboardInterrupt(), SystemExit(3)],
    ids=lambda e: type(e).__name__,
)
def test_an_exception_in_the_scope_leaves_the_tree_unchanged(
    publisher: Publisher, root: Path, error: BaseException
) -> None:
    before = state(root)
    with pytest.raises(type(error)) as info, publisher.transaction() as transaction:
        change_everything(transaction)
        raise error
    assert info.value is error
    assert_trees_equal(before, state(root))
    assert areas(root) == []
    with publisher.transaction(lock_timeout=0) as transaction:
        assert transaction.exists(P("doomed/inner/file"))


def test_an_empty_transaction_changes_nothing(publisher: Publisher, root: Path) -> None:
    before = state(root)
    with publisher.transaction():
        pass
    assert_trees_equal(before, state(root))
    assert areas(root) == []


def test_modes_do_not_depend_on_the_umask(root: Path) -> None:
    publisher = open_publisher(f"dir:{root}")
    previous = os.umask(0o077)
    try:
        with publisher.transaction() as transaction:
            tree = transaction.new_dir(P("a/b/tree"))
            transaction.write_file(P("c/d/file"), b"x")
    finally:
        os.umask(previous)
    for directory in ("a", "a/b", "a/b/tree", "c", "c/d"):
        assert stat.S_IMODE(os.stat(root / directory).st_mode) == 0o755, directory
    assert stat.S_IMODE(os.stat(root / "c/d/file").st_mode) == 0o644
    assert not tree.exists()


def test_the_transaction_refuses_calls_after_its_scope(publisher: Publisher) -> None:
    with publisher.transaction() as transaction:
        pass
    with pytest.raises(PublishError, match="transaction has ended"):
        transaction.write_file(P("late"), b"")
    with pytest.raises(PublishError, match="transaction has ended"):
        transaction.exists(P("late"))


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


@pytest.mark.parametrize("existing", [".flat/aa/one", ".metadata/x/status.json", "reg/img:1"])
def test_new_dir_refuses_a_published_path(publisher: Publisher, existing: str) -> None:
    with (
        publisher.transaction() as transaction,
        pytest.raises(PublishError, match=f"{existing}: it already exists"),
    ):
        transaction.new_dir(P(existing))


def test_new_dir_refuses_a_path_claimed_in_the_transaction(publisher: Publisher) -> None:
    with publisher.transaction() as transaction:
        transaction.new_dir(P(".flat/cc/three"))
        with pytest.raises(PublishError, match=r"\.flat/cc/three: it already exists"):
            transaction.new_dir(P(".flat/cc/three"))
        transaction.write_file(P("parent/child"), b"")
        with pytest.raises(PublishError, match="parent: it already exists"):
            transaction.new_dir(P("parent"))


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


def _call(transaction: Transaction, method: str, path: PurePosixPath) -> object:
    calls: dict[str, Callable[[], object]] = {
        "new_dir": lambda: transaction.new_dir(path),
        "write_file": lambda: transaction.write_file(path, b"x"),
        "set_symlink": lambda: transaction.set_symlink(path, "target"),
        "remove": lambda: transaction.remove(path),
        "exists": lambda: transaction.exists(path),
        "read_path": lambda: transaction.read_path(path),
    }
    return calls[method]()


METHODS = ["new_dir", "write_file", "set_symlink", "remove", "exists", "read_path"]
BAD_PATHS = [
    ("/etc/passwd", "absolute"),
    ("reg/../../etc", "contains '..'"),
    ("..", "contains '..'"),
    ("", "empty"),
    (".unpacked/lock", "private directory"),
    ("reg/img:1/file", "through the symbolic link reg/img:1"),
    ("alias/aa/one/file", "through the symbolic link alias"),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("path", "reason"), BAD_PATHS, ids=[p for p, _ in BAD_PATHS])
def test_bad_paths_are_refused_naming_the_path(
    publisher: Publisher, root: Path, method: str, path: str, reason: str
) -> None:
    os.symlink(".flat", root / "alias")
    before = state(root)
    with publisher.transaction() as transaction, pytest.raises(PublishError) as info:
        _call(transaction, method, P(path))
    assert repr(str(P(path))) in str(info.value)
    assert reason in str(info.value)
    assert_trees_equal(before, state(root))


@pytest.mark.parametrize("method", ["new_dir", "write_file", "set_symlink"])
def test_writing_below_a_file_is_refused(publisher: Publisher, method: str) -> None:
    with publisher.transaction() as transaction:
        with pytest.raises(PublishError, match=r"\.metadata/x/status\.json is not a directory"):
            _call(transaction, method, P(".metadata/x/status.json/below"))
        assert not transaction.exists(P(".metadata/x/status.json/below"))


def test_paths_may_be_given_as_strings_and_are_normalised(publisher: Publisher) -> None:
    with publisher.transaction() as transaction:
        assert transaction.exists(".flat//aa/./one/")  # type: ignore[arg-type]


# --- what a transaction records ----------------------------------------------------------


def test_write_file_and_set_symlink_refuse_a_directory_not_removed_first(
    publisher: Publisher,
) -> None:
    with publisher.transaction() as transaction:
        with pytest.raises(PublishError, match="cannot replace dirfile: it is a directory"):
            transaction.write_file(P("dirfile"), b"")
        with pytest.raises(PublishError, match="cannot replace dirfile: it is a directory"):
            transaction.set_symlink(P("dirfile"), "x")


def test_a_directory_removed_first_can_become_a_link(publisher: Publisher, root: Path) -> None:
    with publisher.transaction() as transaction:
        transaction.remove(P("dirfile"))
        assert not transaction.exists(P("dirfile"))
        transaction.set_symlink(P("dirfile"), ".flat")
        assert transaction.exists(P("dirfile"))
        assert not transaction.exists(P("dirfile/content"))
    assert os.readlink(root / "dirfile") == ".flat"


def test_paths_inside_pending_changes_are_refused(publisher: Publisher) -> None:
    with publisher.transaction() as transaction:
        transaction.new_dir(P("fresh"))
        with pytest.raises(PublishError, match="inside fresh, a new directory"):
            transaction.write_file(P("fresh/file"), b"")
        transaction.remove(P("doomed"))
        with pytest.raises(PublishError, match="inside doomed, which this transaction removes"):
            transaction.write_file(P("doomed/inner/file"), b"")
        transaction.write_file(P("plain"), b"")
        with pytest.raises(PublishError, match="plain is a file or link in this transaction"):
            transaction.set_symlink(P("plain/link"), "x")


def test_exists_sees_pending_changes(publisher: Publisher) -> None:
    with publisher.transaction() as transaction:
        fresh = transaction.new_dir(P("fresh"))
        (fresh / "sub").mkdir()
        (fresh / "sub" / "file").write_bytes(b"")
        os.symlink("/", fresh / "escape")
        assert transaction.exists(P("fresh/sub/file"))
        assert transaction.exists(P("fresh/escape"))
        assert not transaction.exists(P("fresh/escape/etc"))
        assert not transaction.exists(P("fresh/nothing"))
        transaction.write_file(P("deep/down/file"), b"")
        assert transaction.exists(P("deep"))
        assert transaction.exists(P("deep/down"))
        transaction.remove(P(".flat/aa/one"))
        assert not transaction.exists(P(".flat/aa/one/file"))
        assert transaction.exists(P(".flat/aa"))
        assert transaction.exists(P("reg/img:1"))  # a link counts, even if it now dangles


def test_the_latest_change_of_a_path_wins(publisher: Publisher, root: Path) -> None:
    with publisher.transaction() as transaction:
        transaction.write_file(P("twice"), b"first")
        transaction.write_file(P("twice"), b"second")
        transaction.write_file(P("gone/file"), b"")
        transaction.remove(P("gone"))
        transaction.set_symlink(P("flip"), "a")
        transaction.write_file(P("flip"), b"now a file")
        with pytest.raises(PublishError, match="cannot remove nowhere: nothing is there"):
            transaction.remove(P("nowhere"))
    assert (root / "twice").read_bytes() == b"second"
    assert not os.path.lexists(root / "gone")
    assert (root / "flip").read_bytes() == b"now a file"
    assert areas(root) == []


def test_a_symlink_target_is_kept_verbatim_and_must_be_valid(
    publisher: Publisher, root: Path
) -> None:
    with publisher.transaction() as transaction:
        transaction.set_symlink(P("absolute"), "/cvmfs/unpacked.cern.ch/x")
        for bad in ("", "a\0b"):
            with pytest.raises(PublishError, match="invalid target"):
                transaction.set_symlink(P("bad"), bad)
    assert os.readlink(root / "absolute") == "/cvmfs/unpacked.cern.ch/x"


def test_a_lease_limits_writes_not_reads(publisher: Publisher, root: Path) -> None:
    with publisher.transaction(lease=P("reg")) as transaction:
        assert transaction.exists(P(".metadata/x/status.json"))
        transaction.set_symlink(P("reg/img:3"), "../.flat/aa/one")
        with pytest.raises(PublishError, match=r"\.metadata/y is outside the .*lease reg"):
            transaction.write_file(P(".metadata/y"), b"")
        with pytest.raises(PublishError, match="outside"):
            transaction.remove(P("doomed"))
    assert os.path.islink(root / "reg/img:3")
    for lease in ("/reg", "../reg", ".unpacked"):
        with (
            pytest.raises(ConfigError, match="invalid lease"),
            publisher.transaction(lease=P(lease)),
        ):
            pass


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

SWAPS = 150


def _watch(root: Path, swap: Callable[[int], None], *, until_missing: bool) -> dict[str, object]:
    stop = root.parent / "stop"
    with Worker("watch", str(root / "reg/img:1"), str(root / "data"), str(stop)) as watcher:
        watcher.expect("watching")
        for index in range(SWAPS):
            swap(index)
        if until_missing:
            assert watcher.line(timeout=20) == "missing"
        stop.write_bytes(b"")
        line = watcher.line(timeout=20)
        if line == "missing":
            line = watcher.line(timeout=20)
        assert watcher.finish() == 0, watcher.stderr()
    stop.unlink()
    report: dict[str, object] = json.loads(line)
    return report


def test_replacing_a_link_or_a_file_never_leaves_a_moment_without_it(
    publisher: Publisher, root: Path
) -> None:
    contents = {"a": b"a" * 65536, "b": b"b" * 300000}

    def publish(index: int) -> None:
        name = "ab"[index % 2]
        with publisher.transaction() as transaction:
            transaction.set_symlink(P("reg/img:1"), name)
            transaction.write_file(P("data"), contents[name])

    publish(1)
    report = _watch(root, publish, until_missing=False)
    assert report["missing"] == 0
    assert report["targets"] == ["a", "b"]
    # Only whole files: a partial write would show another length.
    assert report["contents"] == ["ax65536", "bx300000"]


def test_the_swap_watcher_does_see_a_non_atomic_swap(publisher: Publisher, root: Path) -> None:
    # Control for the test above: unlink-then-create must be caught, or the watcher is blind.
    (root / "data").write_bytes(b"a")

    def naive(index: int) -> None:
        for _ in range(20):
            os.unlink(root / "reg/img:1")
            os.symlink("ab"[index % 2], root / "reg/img:1")

    report = _watch(root, naive, until_missing=True)
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
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if os.geteuid() != 0:
        pytest.skip("unprivileged: the form is AUFS without a probe")
    mountpoint = tmp_path / "ramfs"
    mountpoint.mkdir()
    done = subprocess.run(
        ["mount", "-t", "ramfs", "none", str(mountpoint)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount ramfs: {done.stderr.decode().strip()}")
    try:
        publisher = open_publisher(f"dir:{mountpoint / 'repo'}")
        assert publisher.capabilities.whiteouts is WhiteoutForm.AUFS
        assert "cannot create overlay whiteouts here" in caplog.text
        assert "kept as .wh. files" in caplog.text
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True, timeout=30)


def test_discard_drops_an_entry_of_a_new_tree_and_never_publishes_it(
    publisher: Publisher, root: Path, tmp_path: Path
) -> None:
    with publisher.transaction() as transaction:
        tree = transaction.new_dir(P("fresh"))
        (tree / "partial").mkdir()
        (tree / "partial" / "half").write_bytes(b"half")
        transaction.discard(tree / "partial")
        assert not (tree / "partial").exists()
        (tree / "partial").mkdir()  # made again, empty
        (tree / "partial" / "whole").write_bytes(b"whole")
        scratch = transaction.scratch_dir() / "s"
        scratch.write_bytes(b"s")
        transaction.discard(scratch)
        assert not scratch.exists()
        for refused in (tree, root / "a", tmp_path, tree.parent / "elsewhere"):
            with pytest.raises(PublishError, match="cannot discard"):
                transaction.discard(refused)
    assert os.listdir(root / "fresh" / "partial") == ["whole"]
    assert areas(root) == []
