"""The publishing contract (``publish/_base.py``), run against every backend of the table.

Each test takes ``publisher_factory`` (``conftest.py``), parametrised over the implemented
backends; what only ``dir:`` does (its journal, its staging area, its file system) is
tested in ``test_publish_dir.py`` and the crash tests.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import pytest
from publish_helpers import PublisherFactory, change_everything, populate, state, watch_swaps

from support.tree import assert_trees_equal
from unpacked.errors import ConfigError, PublishError
from unpacked.publish import Publisher, Transaction

P = PurePosixPath
PRIVATE = "<the backend's private directory>"


@pytest.fixture
def publisher(publisher_factory: PublisherFactory) -> Publisher:
    publisher = publisher_factory()
    with publisher.transaction() as transaction:
        populate(transaction)
    return publisher


@pytest.fixture
def root(publisher: Publisher) -> Path:
    """Where readers see the published tree."""
    return publisher.root


@pytest.fixture
def leftovers(publisher_factory: PublisherFactory, publisher: Publisher) -> Callable[[], list[str]]:
    """What the backend still keeps of finished transactions: nothing, after each of them."""
    return lambda: publisher_factory.leftovers(publisher)


def test_a_transaction_has_its_publishers_capabilities(publisher: Publisher) -> None:
    with publisher.transaction() as transaction:
        assert transaction.capabilities == publisher.capabilities


def test_changes_are_visible_only_after_the_commit(
    leftovers: Callable[[], list[str]], publisher: Publisher, root: Path
) -> None:
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
    assert leftovers() == []


@pytest.mark.parametrize(
    "error",
    [RuntimeError("boom"), PublishError("no"), KeyboardInterrupt(), SystemExit(3)],
    ids=lambda e: type(e).__name__,
)
def test_an_exception_in_the_scope_leaves_the_tree_unchanged(
    leftovers: Callable[[], list[str]], publisher: Publisher, root: Path, error: BaseException
) -> None:
    before = state(root)
    with pytest.raises(type(error)) as info, publisher.transaction() as transaction:
        change_everything(transaction)
        raise error
    assert info.value is error
    assert_trees_equal(before, state(root))
    assert leftovers() == []
    with publisher.transaction(lock_timeout=0) as transaction:
        assert transaction.exists(P("doomed/inner/file"))


def test_an_empty_transaction_changes_nothing(
    leftovers: Callable[[], list[str]], publisher: Publisher, root: Path
) -> None:
    before = state(root)
    with publisher.transaction():
        pass
    assert_trees_equal(before, state(root))
    assert leftovers() == []


def test_modes_do_not_depend_on_the_umask(publisher_factory: PublisherFactory) -> None:
    publisher = publisher_factory()
    root = publisher.root
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
    (PRIVATE, "private directory"),
    ("reg/img:1/file", "through the symbolic link reg/img:1"),
    ("alias/aa/one/file", "through the symbolic link alias"),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(("path", "reason"), BAD_PATHS, ids=[p for p, _ in BAD_PATHS])
def test_bad_paths_are_refused_naming_the_path(
    publisher: Publisher,
    publisher_factory: PublisherFactory,
    method: str,
    path: str,
    reason: str,
) -> None:
    root = publisher.root
    os.symlink(".flat", root / "alias")  # by hand (N5): a link on the way, never followed
    if path == PRIVATE:
        path = publisher_factory.private_path
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


def test_the_latest_change_of_a_path_wins(
    leftovers: Callable[[], list[str]], publisher: Publisher, root: Path
) -> None:
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
    assert leftovers() == []


def test_a_symlink_target_is_kept_verbatim_and_must_be_valid(
    publisher: Publisher, root: Path
) -> None:
    with publisher.transaction() as transaction:
        transaction.set_symlink(P("absolute"), "/cvmfs/unpacked.cern.ch/x")
        for bad in ("", "a\0b"):
            with pytest.raises(PublishError, match="invalid target"):
                transaction.set_symlink(P("bad"), bad)
    assert os.readlink(root / "absolute") == "/cvmfs/unpacked.cern.ch/x"


def test_a_lease_limits_writes_not_reads(
    publisher: Publisher, root: Path, publisher_factory: PublisherFactory
) -> None:
    with publisher.transaction(lease=P("reg")) as transaction:
        assert transaction.exists(P(".metadata/x/status.json"))
        transaction.set_symlink(P("reg/img:3"), "../.flat/aa/one")
        with pytest.raises(PublishError, match=r"\.metadata/y is outside the .*lease reg"):
            transaction.write_file(P(".metadata/y"), b"")
        with pytest.raises(PublishError, match="outside"):
            transaction.remove(P("doomed"))
    assert os.path.islink(root / "reg/img:3")
    private = PurePosixPath(publisher_factory.private_path).parts[0]
    for lease in ("/reg", "../reg", private):
        with (
            pytest.raises(ConfigError, match="invalid lease"),
            publisher.transaction(lease=P(lease)),
        ):
            pass


def test_discard_drops_an_entry_of_a_new_tree_and_never_publishes_it(
    leftovers: Callable[[], list[str]], publisher: Publisher, root: Path, tmp_path: Path
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
    assert leftovers() == []


# --- P5: each path changes atomically ------------------------------------------------


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
    report = watch_swaps(root, publish, until_missing=False)
    assert report["missing"] == 0
    assert report["targets"] == ["a", "b"]
    # Only whole files: a partial write would show another length.
    assert report["contents"] == ["ax65536", "bx300000"]
