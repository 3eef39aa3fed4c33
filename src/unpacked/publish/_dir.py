"""The ``dir:`` backend: a plain directory, published into with renames under a journal.

Layout of the backend's private directory inside the root (readers ignore it)::

    <root>/.unpacked/lock                      flock'ed by the transaction holder
    <root>/.unpacked/lock.turnstile            flock'ed by the next in line (see ``_lock``)
    <root>/.unpacked/transactions/<id>/        one per transaction, see ``_journal``

Staging lives inside the root so that publishing is rename(2) on one file system.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from unpacked.errors import ConfigError, PublishError
from unpacked.publish import _commit
from unpacked.publish._base import Capabilities, Publisher, Transaction, WhiteoutForm
from unpacked.publish._changes import Change, Changes, NewDir, NewFile, NewLink, Removal, plan
from unpacked.publish._flusher import Flusher
from unpacked.publish._fs import DIR_MODE, is_real_dir, lexists
from unpacked.publish._journal import JOURNAL_NAME, Area
from unpacked.publish._lock import repository_lock
from unpacked.publish._private import PrivateArea
from unpacked.publish._probe import whiteout_form

logger = logging.getLogger(__name__)

PRIVATE_DIR = ".unpacked"
_TRANSACTIONS = "transactions"
FILE_MODE = 0o644
_PRIVATE_MODE = 0o700


def _blocking_ancestor(base: Path, path: PurePosixPath) -> tuple[PurePosixPath, str] | None:
    """The first proper ancestor of ``path`` in ``base`` that exists but is no plain directory."""
    for ancestor in reversed(path.parents[:-1]):
        try:
            mode = os.lstat(base / ancestor).st_mode
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(mode):
            return ancestor, "a symbolic link"
        if not stat.S_ISDIR(mode):
            return ancestor, "not a directory"
    return None


def _syntax_problem(path: PurePosixPath) -> str | None:
    if path.is_absolute():
        return "it is absolute (paths are relative to the repository root)"
    if not path.parts:
        return "it is empty"
    if ".." in path.parts:
        return "it contains '..'"
    if "\0" in str(path):
        return "it contains a NUL byte"
    if path.parts[0] == PRIVATE_DIR:
        return f"{PRIVATE_DIR} is the publisher's private directory"
    return None


class DirTransaction(Transaction):
    """The changes of one ``dir:`` transaction, staged in its area until the commit."""

    def __init__(
        self, spec: str, area: Area, lease: PurePosixPath | None, capabilities: Capabilities
    ) -> None:
        self._spec = spec
        self._capabilities = capabilities
        self._root = area.root
        self._area = area
        self._lease = lease
        self._changes = Changes()
        self._names = itertools.count()
        self._open = True
        self._flusher = Flusher(area.directory)

    # --- the Transaction interface ---
    # Each method translates OSError (from the checks' lstat as much as from staging).

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    def new_dir(self, path: PurePosixPath) -> Path:
        with self._translated("create directory", path):
            path = self._writable(path)
            if lexists(self._root / path) or self._exists(path):
                raise PublishError(
                    f"{self._spec}: cannot create directory {path}: it already exists"
                )
            staged = self._area.new / self._stage_name()
            os.mkdir(staged, DIR_MODE)
            os.chmod(staged, DIR_MODE)
            self._changes.record(path, NewDir(staged.name))
            return staged

    def write_file(self, path: PurePosixPath, data: bytes) -> None:
        with self._translated("write", path):
            path = self._writable(path)
            self._refuse_directory(path)
            staged = self._area.new / self._stage_name()
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            with os.fdopen(os.open(staged, flags, FILE_MODE), "wb") as stream:
                os.fchmod(stream.fileno(), FILE_MODE)
                stream.write(data)
            # No fsync here: the commit flushes the whole staging area at once.
            self._changes.record(path, NewFile(staged.name))

    def set_symlink(self, path: PurePosixPath, target: str) -> None:
        with self._translated("create symbolic link", path):
            path = self._writable(path)
            if not target or "\0" in target:
                raise PublishError(
                    f"{self._spec}: invalid target {target!r} for symbolic link {path}"
                )
            self._refuse_directory(path)
            staged = self._area.new / self._stage_name()
            os.symlink(target, staged)
            self._changes.record(path, NewLink(staged.name))

    def remove(self, path: PurePosixPath) -> None:
        with self._translated("remove", path):
            path = self._writable(path)
            if not self._exists(path):
                raise PublishError(f"{self._spec}: cannot remove {path}: nothing is there")
            self._changes.record(path, Removal())

    def exists(self, path: PurePosixPath) -> bool:
        with self._translated("look up", path):
            return self._exists(self._checked(path))

    def read_path(self, path: PurePosixPath) -> Path:
        with self._translated("look up", path):
            return self._root / self._checked(path)

    # --- for the publisher ---

    def scratch_dir(self) -> Path:
        scratch = self._area.directory / "scratch"
        with contextlib.suppress(FileExistsError):
            os.mkdir(scratch, 0o700)
        return scratch

    def write_ahead(self) -> None:
        self._flusher.request()

    def discard(self, path: Path) -> None:
        with self._translated("discard", PurePosixPath(path)):
            if not self._open:
                raise PublishError(f"{self._spec}: the transaction has ended; open a new one")
            local = Path(os.path.abspath(path))
            if not self._discardable(local):
                raise PublishError(
                    f"{self._spec}: cannot discard {path}: not inside a new tree or scratch"
                )
            # The area is deleted with the transaction, whatever its outcome.
            os.rename(local, self.scratch_dir() / f"discarded-{self._stage_name()}")

    def _discardable(self, local: Path) -> bool:
        new = self._area.new
        if new in local.parents and local.parent != new:  # inside new/<tree>/, not a tree
            return True
        return self._area.directory / "scratch" in local.parents

    def close(self) -> None:
        """Refuse every further call: the scope of the transaction has ended."""
        self._open = False
        self._flusher.close()

    def commit(self) -> None:
        """Publish the recorded changes (see ``_commit.commit`` for failures)."""
        try:
            steps = plan(self._changes.as_mapping(), lambda path: is_real_dir(self._root / path))
        except OSError as error:
            raise PublishError(f"{self._spec}: cannot plan the commit: {error}") from error
        if not steps:
            logger.debug("%s: nothing to publish", self._spec)
            return
        _commit.commit(self._area, steps, self._spec)
        self._log_published()

    # --- checks ---

    def _checked(self, path: PurePosixPath) -> PurePosixPath:
        if not self._open:
            raise PublishError(f"{self._spec}: the transaction has ended; open a new one")
        path = PurePosixPath(path)
        problem = _syntax_problem(path)
        if problem is None:
            blocking = _blocking_ancestor(self._root, path)
            if blocking is not None and blocking[1] == "a symbolic link":
                problem = f"it goes through the symbolic link {blocking[0]}"
        if problem is not None:
            raise PublishError(f"{self._spec}: refusing path {str(path)!r}: {problem}")
        return path

    def _writable(self, path: PurePosixPath) -> PurePosixPath:
        path = self._checked(path)
        lease = self._lease
        if lease is not None and path != lease and lease not in path.parents:
            raise PublishError(f"{self._spec}: {path} is outside the transaction's lease {lease}")
        blocking = _blocking_ancestor(self._root, path)
        if blocking is not None:
            raise PublishError(f"{self._spec}: cannot write {path}: {blocking[0]} is {blocking[1]}")
        for ancestor in path.parents[:-1]:
            change = self._changes.get(ancestor)
            if change is not None:
                raise PublishError(
                    f"{self._spec}: cannot write {path}: {_covered(ancestor, change)}"
                )
        return path

    def _refuse_directory(self, path: PurePosixPath) -> None:
        if is_real_dir(self._root / path) and not isinstance(self._changes.get(path), Removal):
            raise PublishError(
                f"{self._spec}: cannot replace {path}: it is a directory (remove it first)"
            )

    # --- state ---

    def _exists(self, path: PurePosixPath) -> bool:
        for ancestor in path.parents[:-1]:
            change = self._changes.get(ancestor)
            if isinstance(change, NewDir):
                staged = self._area.new / change.staged
                inside = path.relative_to(ancestor)
                return _blocking_ancestor(staged, inside) is None and lexists(staged / inside)
            if change is not None:
                return False
        change = self._changes.get(path)
        if change is not None:
            return not isinstance(change, Removal)
        if self._changes.creates_under(path):
            return True
        return _blocking_ancestor(self._root, path) is None and lexists(self._root / path)

    def _stage_name(self) -> str:
        return str(next(self._names))

    @contextlib.contextmanager
    def _translated(self, action: str, path: PurePosixPath) -> Iterator[None]:
        try:
            yield
        except OSError as error:
            raise PublishError(
                f"{self._spec}: cannot {action} {path}: {error.strerror or error}"
            ) from error

    def _log_published(self) -> None:
        counts = {kind: 0 for kind in (NewDir, NewFile, NewLink, Removal)}
        for path, change in self._changes.items():
            counts[type(change)] += 1
            logger.debug("%s: %s %s", self._spec, type(change).__name__, path)
        logger.info(
            "%s: published %d new tree(s), %d file(s), %d link(s), %d removal(s)",
            self._spec,
            counts[NewDir],
            counts[NewFile],
            counts[NewLink],
            counts[Removal],
        )


def _covered(ancestor: PurePosixPath, change: Change) -> str:
    if isinstance(change, NewDir):
        return (
            f"it is inside {ancestor}, a new directory of this transaction "
            "(write into the path new_dir returned)"
        )
    if isinstance(change, Removal):
        return f"it is inside {ancestor}, which this transaction removes"
    return f"{ancestor} is a file or link in this transaction"


class DirPublisher(Publisher):
    """Publishes into a plain directory (local or a shared POSIX file system)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.spec = f"dir:{root}"
        self._private = root / PRIVATE_DIR
        self._capabilities: Capabilities | None = None

    @classmethod
    def open(cls, location: str, create: bool = True) -> DirPublisher:
        """The publisher for ``location``; the directory is created if only it is missing."""
        if not location:
            raise ConfigError("dir: needs a path, e.g. dir:/srv/unpacked")
        root = Path(os.path.abspath(location))
        if not create and not root.is_dir():
            raise ConfigError(f"dir:{root}: no such repository directory")
        try:
            os.mkdir(root, DIR_MODE)
        except FileExistsError:
            if not root.is_dir():
                raise ConfigError(f"dir:{root}: exists and is not a directory") from None
        except FileNotFoundError:
            raise ConfigError(
                f"dir:{root}: the parent directory {root.parent} does not exist"
            ) from None
        except OSError as error:
            raise ConfigError(f"dir:{root}: cannot create it: {error.strerror}") from error
        else:
            os.chmod(root, DIR_MODE)
            logger.info("created repository directory %s", root)
        return cls(root)

    @property
    def capabilities(self) -> Capabilities:
        if self._capabilities is None:
            self._capabilities = Capabilities(
                whiteouts=self._probe_whiteouts(),
                hardlinks_across_directories=True,
                scratch_on_tree_filesystem=True,  # staging lives inside the root
            )
        return self._capabilities

    def _probe_whiteouts(self) -> WhiteoutForm:
        """Probe the staging area once: trees are staged there, and renamed into place."""
        if os.geteuid() != 0:
            return whiteout_form(self.root)[0]  # no probe needed, nothing created
        form, reason = whiteout_form(self._private_dirs())
        if reason is not None:
            logger.warning("%s: %s", self.spec, reason)
        return form

    @contextlib.contextmanager
    def transaction(
        self, *, lease: PurePosixPath | None = None, lock_timeout: float = 600.0
    ) -> Iterator[Transaction]:
        lease = self._checked_lease(lease)
        if not lock_timeout >= 0:
            raise ConfigError(f"{self.spec}: lock timeout must be >= 0 seconds, not {lock_timeout}")
        transactions = self._private_dirs()
        with repository_lock(self._private / "lock", self.spec, lock_timeout):
            _commit.recover(transactions, self.root, self.spec)
            area = self._new_area(transactions)
            try:
                transaction = DirTransaction(self.spec, area, lease, self.capabilities)
                try:
                    yield transaction
                except BaseException as error:
                    logger.info(
                        "%s: transaction abandoned (%r); nothing published", self.spec, error
                    )
                    raise
                finally:
                    transaction.close()
                transaction.commit()
            finally:
                _commit.discard(area, self.spec)

    @contextlib.contextmanager
    def locked(self, *, lock_timeout: float = 600.0) -> Iterator[None]:
        if not is_real_dir(self._private):
            # No transaction ever ran here (a copied tree): there is nothing to exclude,
            # and a reader must not create the private directory.
            yield
            return
        with repository_lock(self._private / "lock", self.spec, lock_timeout):
            yield

    def private_area(self) -> PrivateArea:
        private = PurePosixPath(PRIVATE_DIR)
        return PrivateArea(private, private / _TRANSACTIONS, JOURNAL_NAME)

    def _checked_lease(self, lease: PurePosixPath | None) -> PurePosixPath | None:
        if lease is None:
            return None
        lease = PurePosixPath(lease)
        problem = _syntax_problem(lease)
        if problem is not None:
            raise ConfigError(f"{self.spec}: invalid lease path {str(lease)!r}: {problem}")
        return lease

    def _private_dirs(self) -> Path:
        transactions = self._private / _TRANSACTIONS
        try:
            for directory in (self._private, transactions):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(directory, _PRIVATE_MODE)
                if not is_real_dir(directory):
                    raise PublishError(f"{self.spec}: {directory} is not a directory")
            same_fs = os.stat(transactions).st_dev == os.stat(self.root).st_dev
        except OSError as error:
            raise PublishError(
                f"{self.spec}: cannot prepare {self._private}: {error.strerror}"
            ) from error
        if not same_fs:
            raise PublishError(
                f"{self.spec}: {self._private} is on another file system than the root; "
                "publishing needs rename(2) between them"
            )
        return transactions

    def _new_area(self, transactions: Path) -> Area:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        directory = transactions / f"{stamp}-{os.getpid()}-{secrets.token_hex(4)}"
        area = Area(self.root, directory)
        try:
            for path in (directory, area.new, area.old):
                os.mkdir(path, _PRIVATE_MODE)
        except OSError as error:
            raise PublishError(
                f"{self.spec}: cannot create transaction area {directory}: {error.strerror}"
            ) from error
        return area
