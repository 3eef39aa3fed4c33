"""Where a wish list comes from: a file, a pipe or a device (``/dev/stdin``, ``<(...)``,
a FIFO), or standard input written as ``-``."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from unpacked.errors import ConfigError
from unpacked.wishlist import WishList, load, load_bytes

STDIN = "-"


def names_a_file(item: str) -> bool:
    """Whether ``check-image-syntax`` reads ``item`` as a wish list rather than a reference.

    ``-`` and any existing path but a directory (no wish list is one, and ``ubuntu`` may
    well be a directory where the command runs). Never raises: ``os.path`` answers False
    where ``Path.exists`` raises, e.g. for a reference whose name is too long for a path.
    """
    return item == STDIN or (os.path.exists(item) and not os.path.isdir(item))


def read_wishlist(name: str, *, strict: bool = False) -> WishList:
    """The wish list in the file ``name``, or on standard input for ``-``."""
    if name == STDIN:
        return load_bytes(sys.stdin.buffer.read(), source="<stdin>", strict=strict)
    return load(Path(name), strict=strict)


def require_rereadable(name: str) -> None:
    """Refuse a wish list that cannot be read twice: ``loop`` reads it every cycle, and a
    pipe or standard input would be empty from the second cycle on."""
    if name == STDIN:
        raise ConfigError(
            "loop reads its wish list again every cycle: it needs a file, not standard input (-)"
        )
    try:
        mode = os.stat(name).st_mode
    except (OSError, ValueError):
        return  # a missing file is reported by each cycle, and may appear later
    if not stat.S_ISREG(mode):
        raise ConfigError(
            f"{name}: loop reads its wish list again every cycle: it needs a regular file, "
            "not a pipe or a device"
        )
