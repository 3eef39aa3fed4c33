"""A full repository file system, told as such: what it is, what was needed, what was free.

``ENOSPC`` or ``EDQUOT`` may surface anywhere a conversion writes: a blob's scratch file,
a layer's entries (in a worker process, whose ``LayerError`` carries only the errno, see
``layers._worker``), the commit (``PublishError``). ``space_errors`` finds it in the
exception chain once the transaction has discarded everything, and raises
``RepositoryFullError`` instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path

from unpacked.errors import RepositoryFullError
from unpacked.manifest import Descriptor

_FULL = (errno.ENOSPC, errno.EDQUOT)
# Unpacked layers are about three times their compressed size (gzip and zstd alike on
# typical images); only an estimate for the message, never a limit.
_UNPACKED_RATIO = 3


def full_errno(exc: BaseException) -> int | None:
    """``ENOSPC`` or ``EDQUOT`` if it caused ``exc`` (anywhere in its chain), else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        code = getattr(current, "errno", None)
        if code in _FULL:
            return int(code)
        current = current.__cause__ or current.__context__
    return None


def mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path``."""
    path = Path(os.path.abspath(path))
    device = os.stat(path).st_dev
    while path.parent != path and os.stat(path.parent).st_dev == device:
        path = path.parent
    return path


def estimate_needed(layers: list[Descriptor]) -> tuple[int, int]:
    """(compressed, estimated unpacked) bytes of ``layers``."""
    compressed = sum(layer.size for layer in layers)
    unpacked = sum(
        layer.size * (1 if layer.media_type.endswith("tar") else _UNPACKED_RATIO)
        for layer in layers
    )
    return compressed, unpacked


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def describe_full(root: Path, code: int, what: str, layers: list[Descriptor]) -> str:
    mount = mount_point(root)
    stats = os.statvfs(root)
    free = stats.f_bavail * stats.f_frsize
    compressed, unpacked = estimate_needed(layers)
    reason = "disk quota exceeded" if code == errno.EDQUOT else "no space left on device"
    return (
        f"{what}: the repository's file system ({mount}, holding {root}) is full ({reason}): "
        f"the image needs about {human(compressed + unpacked)} ({human(compressed)} of "
        f"compressed layers, about {human(unpacked)} unpacked), {human(free)} is free; "
        "nothing was published"
    )


@contextlib.contextmanager
def space_errors(root: Path, what: str, layers: list[Descriptor]) -> Iterator[None]:
    """Turn a full file system under the block into ``RepositoryFullError``."""
    try:
        yield
    except Exception as exc:
        code = full_errno(exc)
        if code is None:
            raise
        raise RepositoryFullError(describe_full(root, code, what, layers)) from exc
