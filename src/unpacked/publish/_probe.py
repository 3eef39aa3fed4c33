"""What a directory of the ``dir:`` backend can hold: the whiteout form (C1 of ``_base``).

The probe tries both overlay forms once on a scratch name in the backend's own staging
area, which lies on the repository's file system: root inside a user namespace, or a file
system without trusted xattrs (NFS, some FUSE), cannot hold them.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

from unpacked.publish._base import WhiteoutForm

OPAQUE_XATTR = "trusted.overlay.opaque"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def whiteout_form(directory: Path) -> tuple[WhiteoutForm, str | None]:
    """The form ``directory`` can hold, and why not ``OVERLAY`` when it is not.

    The reason is a warning only when running as root (unprivileged, ``AUFS`` is expected).
    """
    if os.geteuid() != 0:
        return WhiteoutForm.AUFS, "not running as root: whiteouts are kept as .wh. files"
    probe = directory / f".unpacked-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        _try_overlay_forms(probe)
    except OSError as exc:
        with_reason = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        return (
            WhiteoutForm.AUFS,
            f"cannot create overlay whiteouts here ({with_reason}): kept as .wh. files",
        )
    return WhiteoutForm.OVERLAY, None


def _try_overlay_forms(probe: Path) -> None:
    os.mknod(probe, stat.S_IFCHR, 0)
    os.unlink(probe)
    os.mkdir(probe, 0o700)
    try:
        fd = os.open(probe, _DIR_FLAGS)
        try:
            os.setxattr(fd, OPAQUE_XATTR, b"y")
        finally:
            os.close(fd)
    finally:
        os.rmdir(probe)
