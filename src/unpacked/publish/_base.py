"""The publishing contract: ``Publisher`` and ``Transaction``, for every backend.

This file is the one place that says what a backend promises and what it does not.
Callers (convert, gc) rely on nothing else; a new backend must keep every promise
below or change this file first.

Promises
--------
P1. Scope. ``Publisher.transaction()`` is a context manager. What a ``Transaction``
    records inside the ``with`` block is published when the block ends without an
    exception. An exception of any kind inside the block (``UnpackedError``,
    ``OSError``, ``KeyboardInterrupt``, ``SystemExit``, ...) discards everything
    recorded, leaves the published tree as it was, and propagates unchanged.
P2. Failed commit. If publishing itself fails, the backend restores the tree it
    started from and raises ``PublishError`` (for an ``OSError``; a
    ``KeyboardInterrupt`` or ``SystemExit`` received during the commit is
    re-raised as it is, after the same restoration). If even the restoration
    fails, the ``PublishError`` says so, and the next ``transaction()`` on the
    repository completes the interrupted commit before doing anything else.
P3. Crashes. A process killed at any moment (SIGKILL, power loss on a file
    system that honours fsync) leaves the repository recoverable: the next
    ``transaction()`` either completes the commit that was under way or discards
    the transaction that had not started committing. Readers never wait for that.
P4. Order. Within a commit, new trees (``new_dir``) become visible first, then
    files (``write_file``), then symbolic links (``set_symlink``), then removals
    (``remove``); within each group, in the order the calls were made. So a
    public link written in the same transaction as the tree it points at never
    points at a missing or half-written tree, and a tree removed in the same
    transaction as the link that pointed at it disappears only after the link.
P5. Each path changes atomically: a reader sees the old or the new file, link or
    tree at a path, never a partly written one. Replacing a file or a link is a
    single swap (no moment without it).
P6. Mutual exclusion. At most one transaction per repository is open at a time,
    across processes (and, where the backend's lock reaches, across hosts). A
    second ``transaction()`` waits up to ``lock_timeout`` seconds, then raises
    ``RepositoryLockedError`` naming the repository and the holder.
P7. Paths. Every path given to a transaction is relative to the repository root.
    Absolute paths, ``..`` components, the empty path, paths through a symbolic
    link of the published tree and paths under a backend's private directory are
    refused with ``PublishError`` naming the path. With a ``lease``, paths written
    must lie at or under it (a CVMFS gateway enforces this; the other backends
    check it too, so that a mistake shows up before production).

NOT guaranteed
--------------
N1. That readers see a whole transaction at once. ``cvmfs:`` does (one publish,
    one new root catalog); ``dir:`` cannot (a plain directory has no multi-path
    atomic operation), so readers may briefly see new metadata next to an old
    public link, in the order of P4. A rolled-back commit (P2) may have been
    visible in part for that moment.
N2. Isolation of reads. ``read_path`` shows the published tree; whether it also
    shows what this transaction has written is backend-specific (``dir:`` no;
    ``cvmfs:`` yes, since a CVMFS transaction writes into the union mount).
    ``exists`` is the only way to ask about pending changes.
N3. That an exception leaving the ``with`` statement means nothing was published.
    A ``KeyboardInterrupt`` can arrive after the commit point, while removed trees
    are being deleted; the changes stay published and the leftovers are deleted by
    the next transaction.
N4. Re-entrance and threads. A transaction is not re-entrant: opening a second one
    on the same repository from the thread that holds one raises ``PublishError``
    immediately instead of waiting for itself. Other threads wait like other
    processes. A ``Transaction`` object must be used by one thread at a time.
N5. Foreign writers. The published tree must change only through publishers of
    this project; a change made by hand while a transaction is open is not
    detected and may make the commit fail (P2 then applies).
N6. Modes and owners. What a caller puts in a ``new_dir`` tree is published with
    the modes and owners it has. Moving a directory needs write permission on it
    for an unprivileged process, so the top directory of a ``new_dir`` tree, and
    of a tree to remove, must stay owner-writable (``PublishError`` otherwise).

Capabilities
------------
What differs between backends is declared, not guessed: callers (convert, layers) ask
``Publisher.capabilities`` (or ``Transaction.capabilities``, the same value) instead of
probing the file system they write into, which on another backend is not where readers
will find the result.

C1. ``whiteouts``: the form a layer's whiteouts and opaque markers must take in the
    trees given to ``new_dir`` so that the backend's readers (the kernel overlay of
    the CVMFS snapshotter, podman, the thin-image driver) read them right, and that the
    backend can hold. ``OVERLAY``: 0/0 character devices and the
    ``trusted.overlay.opaque`` xattr. ``AUFS``: the ``.wh.<name>`` and ``.wh..wh..opq``
    files as in the layer tar (unprivileged, or a file system without those).
C2. ``hardlinks_across_directories``: a hard link between two directories of a
    ``new_dir`` tree is published as a hard link. When False (CVMFS keeps hard links
    within one directory only) a caller copies instead of linking: the result is the
    same tree, with separate files.
C3. ``scratch_on_tree_filesystem``: paths under ``scratch_dir()`` lie on the file system
    of the ``new_dir`` trees, so a file can be renamed or hard-linked between them.
    When False, a caller copies between scratch and a tree, never renames or links.
"""

from __future__ import annotations

import abc
import enum
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from unpacked.publish._private import PrivateArea


class WhiteoutForm(enum.StrEnum):
    """How whiteouts and opaque markers are written in a layer's tree (C1)."""

    OVERLAY = "overlay"
    """0/0 character devices and ``trusted.overlay.opaque=y`` (overlayfs, the snapshotter)."""
    AUFS = "aufs"
    """``.wh.<name>`` files and ``.wh..wh..opq``, as in the layer tar."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend can hold and its readers need (C1-C3 of the module docstring)."""

    whiteouts: WhiteoutForm
    """The form the backend's readers need and the backend can hold."""
    hardlinks_across_directories: bool
    """Whether hard links between directories of a new tree survive publishing."""
    scratch_on_tree_filesystem: bool
    """Whether ``scratch_dir()`` paths can be renamed or hard-linked into ``new_dir`` trees."""


class Transaction(abc.ABC):
    """Changes to one repository, published together when the transaction's scope ends.

    Paths are relative ``PurePosixPath`` values (P7). Missing parent directories of a
    path written are created (mode 0755) when the change is published.
    """

    @property
    @abc.abstractmethod
    def capabilities(self) -> Capabilities:
        """The publisher's ``capabilities``."""

    @abc.abstractmethod
    def new_dir(self, path: PurePosixPath) -> Path:
        """A fresh, empty, writable directory that will appear at ``path`` on commit.

        Fill it through the returned path; what is in it when the transaction's scope
        ends is published (how is the backend's business: a rename for ``dir:``, a
        copy or an ingest for another). Fails if ``path`` exists in the published tree (a
        CVMFS template transaction fails the same way) or already exists in this
        transaction. Calls on paths inside it are refused: write into it directly.
        """

    @abc.abstractmethod
    def write_file(self, path: PurePosixPath, data: bytes) -> None:
        """Create or replace the regular file ``path`` (mode 0644) with ``data``.

        Refused if ``path`` is a directory, unless this transaction removed it first.
        """

    @abc.abstractmethod
    def set_symlink(self, path: PurePosixPath, target: str) -> None:
        """Create or replace the symbolic link ``path`` pointing at ``target`` (kept verbatim).

        Refused if ``path`` is a directory, unless this transaction removed it first.
        """

    @abc.abstractmethod
    def remove(self, path: PurePosixPath) -> None:
        """Remove the file, link or whole tree at ``path``; an error if nothing is there.

        Pending changes of this transaction at or under ``path`` are dropped. Parent
        directories left empty stay.
        """

    @abc.abstractmethod
    def exists(self, path: PurePosixPath) -> bool:
        """Whether ``path`` exists in the published tree with this transaction's changes applied.

        A symbolic link counts as existing whatever it points at; it is never followed.
        """

    @abc.abstractmethod
    def read_path(self, path: PurePosixPath) -> Path:
        """Where the published content of ``path`` can be read (see N2). Do not write there."""

    def write_ahead(self) -> None:  # noqa: B027 - optional: most backends need nothing
        """A hint: what is staged so far may start going to disk now, in the background.

        Thread-safe and cheap. The commit's durability never depends on it; a backend
        whose commit does not wait for writeback ignores it.
        """

    @abc.abstractmethod
    def discard(self, path: Path) -> None:
        """Drop ``path``, an entry the caller made strictly inside a ``new_dir`` tree or
        ``scratch_dir()`` (a half-unpacked layer directory, ...).

        When this returns, nothing is at ``path`` any more (the caller may create it
        again) and what was there is never published; its space is freed by the end of
        the transaction at the latest. Refused (``PublishError``) for any other path, a
        ``new_dir`` tree's top included (``remove`` its repository path instead). Costs
        about one rename whatever the size, so that a caller need not move trees itself
        (a rename between a tree and scratch fails on a backend whose scratch lies on
        another file system, C3).
        """

    @abc.abstractmethod
    def scratch_dir(self) -> Path:
        """A private directory for temporary files (downloaded blobs, ...).

        Never published; removed with the transaction whatever its outcome. Whether
        it shares a file system with the ``new_dir`` trees is ``capabilities``
        (C3: True for ``dir:``); callers delete big files they no longer
        need as they go, so that they are not flushed with the commit.
        """


class Publisher(abc.ABC):
    """One repository and the backend that publishes into it.

    ``spec`` is the string it was opened with, normalised (``"dir:/srv/unpacked"``);
    ``root`` is where readers find the published tree.
    """

    spec: str
    root: Path

    @property
    @abc.abstractmethod
    def capabilities(self) -> Capabilities:
        """What this backend can hold and its readers need (C1-C3); fixed for its lifetime."""

    @abc.abstractmethod
    def transaction(
        self, *, lease: PurePosixPath | None = None, lock_timeout: float = 600.0
    ) -> AbstractContextManager[Transaction]:
        """Lock the repository (waiting up to ``lock_timeout`` seconds) and open a transaction.

        ``lease`` is the relative sub-path the transaction may write under (a CVMFS
        gateway lease); ``None`` means the whole repository.
        """

    @abc.abstractmethod
    def locked(self, *, lock_timeout: float = 600.0) -> AbstractContextManager[None]:
        """Hold the repository lock without opening a transaction (no recovery runs).

        For readers that must not see a commit half-way (``verify``). Waits like
        ``transaction()`` (P6).
        """

    @abc.abstractmethod
    def private_area(self) -> PrivateArea | None:
        """The part of ``root`` the backend keeps for itself (None: it keeps nothing there).

        For readers that report what is not published (``verify`` lists stale staging).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"
