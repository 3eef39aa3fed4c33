"""What a ``dir:`` transaction records, per path, and the journal steps that publish it. No I/O."""

from __future__ import annotations

import itertools
from collections.abc import Callable, ItemsView, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from unpacked.publish._journal import Place, Step, Trash


@dataclass(frozen=True)
class NewDir:
    """A tree staged as ``new/<staged>``."""

    staged: str


@dataclass(frozen=True)
class NewFile:
    """A regular file staged as ``new/<staged>``."""

    staged: str


@dataclass(frozen=True)
class NewLink:
    """A symbolic link staged as ``new/<staged>``."""

    staged: str


@dataclass(frozen=True)
class Removal:
    """Whatever is at the path goes."""


Change = NewDir | NewFile | NewLink | Removal


class Changes:
    """The latest change of each path, in the order of the calls that made them.

    A change replaces every change recorded at or under its path. The index of
    paths under each directory keeps recording and lookups proportional to path
    depth: a converter records thousands of files per image.
    """

    def __init__(self) -> None:
        self._changes: dict[PurePosixPath, Change] = {}
        self._under: dict[PurePosixPath, set[PurePosixPath]] = {}

    def get(self, path: PurePosixPath) -> Change | None:
        return self._changes.get(path)

    def items(self) -> ItemsView[PurePosixPath, Change]:
        return self._changes.items()

    def as_mapping(self) -> Mapping[PurePosixPath, Change]:
        return self._changes

    def record(self, path: PurePosixPath, change: Change) -> None:
        for replaced in [path, *self._under.get(path, ())]:
            self._forget(replaced)
        self._changes[path] = change
        for ancestor in path.parents[:-1]:
            self._under.setdefault(ancestor, set()).add(path)

    def creates_under(self, path: PurePosixPath) -> bool:
        """Whether something is to be created below ``path`` (which makes it a directory)."""
        return any(not isinstance(self._changes[p], Removal) for p in self._under.get(path, ()))

    def _forget(self, path: PurePosixPath) -> None:
        if self._changes.pop(path, None) is None:
            return
        for ancestor in path.parents[:-1]:
            below = self._under[ancestor]
            below.discard(path)
            if not below:
                del self._under[ancestor]


# Trees first, links last (P4): nothing published points at what is not there yet.
_PLACEMENT_ORDER: tuple[type[NewDir | NewFile | NewLink], ...] = (NewDir, NewFile, NewLink)


def plan(
    changes: Mapping[PurePosixPath, Change], is_dir: Callable[[PurePosixPath], bool]
) -> list[Step]:
    """The journal steps for ``changes`` (in the order they were recorded, last change per path).

    ``is_dir(path)`` says whether ``path`` is a directory in the published tree: a
    file or link replacing one (allowed only after a ``remove``) needs it moved away
    first, as rename(2) cannot put a file over a directory.
    """
    names = (str(n) for n in itertools.count())
    steps: list[Step] = []
    for kind in _PLACEMENT_ORDER:
        for path, change in changes.items():
            if not isinstance(change, kind):
                continue
            if kind is not NewDir and is_dir(path):
                steps.append(Trash(path, next(names)))
            steps.append(Place(change.staged, path, next(names)))
    steps.extend(
        Trash(path, next(names)) for path, change in changes.items() if isinstance(change, Removal)
    )
    return steps
