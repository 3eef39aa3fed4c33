"""The worker process of ``UnpackPool``: ``python -m unpacked.layers._worker PARENT_PID``.

Reads pickled calls ``(blob, media type, diff_id, layer directory, name, size, bound,
whiteout form)``
from stdin (``size``: the blob is still being downloaded, read it as it grows) and
answers each with a pickled ``(True, ApplyReport)`` or ``(False, exception)`` on
stdout, until stdin closes. Its parent is the unpacked process, which it does not
outlive, and which alone decides when it stops (SIGINT and SIGTERM are ignored).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import pickle
import signal
import sys
from pathlib import Path
from typing import IO

from unpacked.digest import Digest, Readable
from unpacked.errors import LayerError
from unpacked.layers._apply import unpack_layer
from unpacked.layers._growing import GrowingBlob
from unpacked.layers._report import ApplyReport, Target
from unpacked.publish import WhiteoutForm

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    # A worker that outlived a killed conversion would go on writing into a
    # staging area that the next run's recovery deletes.
    prctl = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)  # Linux only
    if prctl is not None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl (we were reparented)
        sys.exit(1)


def unpack(
    arguments: tuple[str, str, str, str, str, int | None, tuple[int, str] | None, str | None],
) -> ApplyReport:
    blob, media_type, diff_id, root, name, size, bound, whiteouts = arguments
    with contextlib.ExitStack() as stack:
        if size is None:
            stream: Readable = stack.enter_context(open(blob, "rb"))
        else:
            stream = stack.enter_context(GrowingBlob(Path(blob), size, name=name))
        return unpack_layer(
            stream,
            media_type,
            Digest.parse(diff_id),
            Path(root),
            target=Target.LAYERFS,
            whiteouts=None if whiteouts is None else WhiteoutForm(whiteouts),
            defer_lower=True,
            name=name,
            bound=bound,
        )


def _portable(exc: Exception) -> Exception:
    """``exc``, or what caused it when that matters to the parent: a pickled exception
    loses its ``__cause__``, and a full disk must still be told from a bad layer."""
    cause = exc.__cause__
    if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
        return OSError(cause.errno, f"{exc} ({cause.strerror})", cause.filename)
    return exc


def _answer(replies: IO[bytes], ok: bool, value: object) -> None:
    try:
        data = pickle.dumps((ok, value), protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        data = pickle.dumps((False, LayerError(str(value))), protocol=pickle.HIGHEST_PROTOCOL)
    replies.write(data)
    replies.flush()


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    while True:
        try:
            arguments = pickle.load(requests)  # noqa: S301 - from our parent
        except EOFError:
            return
        try:
            report = unpack(arguments)
        except Exception as exc:  # every error goes back to the parent
            _answer(replies, False, _portable(exc))
        else:
            _answer(replies, True, report)


def main() -> None:
    _die_with_parent(int(sys.argv[1]))
    # The parent decides when a layer is abandoned: SIGINT from a terminal, or the
    # SIGTERM systemd sends the whole service, must not cut the layer the parent is
    # finishing before it stops (``loop`` stops between images).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The pipe to the parent is ours alone: anything printed goes to stderr.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
