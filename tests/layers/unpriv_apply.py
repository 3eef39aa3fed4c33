"""Apply one layer as uid/gid 65534: ``python unpriv_apply.py TAR ROOT TARGET [LOWER]``.

Started as root, it imports everything, drops to 65534 with no supplementary
groups (which also empties every capability set), checks that no capability
is left, and only then applies the layer. Doing the drop here rather than
through ``setpriv`` keeps the interpreter, the source tree and the venv out of
the question: on some machines uid 65534 cannot read them (/root is 0700).
Prints the ``ApplyReport`` as JSON, or ``{"error": ..., "message": ...}``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import io
import json
import os
import sys
from pathlib import Path

from unpacked.errors import UnpackedError
from unpacked.layers import Target, apply_layer

NOBODY = 65534
_PR_SET_DUMPABLE = 4


def drop_privileges() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    # A uid change clears "dumpable", which makes /proc/self root's; a user's
    # own process started normally is dumpable.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)
    with open("/proc/self/status") as status:
        caps = {k: v.strip() for k, _, v in (line.partition(":") for line in status)}
    assert int(caps["CapEff"], 16) == 0 and int(caps["CapPrm"], 16) == 0, caps
    assert (os.geteuid(), os.getegid(), os.getgroups()) == (NOBODY, NOBODY, [])


def main(argv: list[str]) -> int:
    tar, root, target = Path(argv[1]).read_bytes(), Path(argv[2]), Target(argv[3])
    lower = Path(argv[4]) if len(argv) > 4 else None
    drop_privileges()
    try:
        report = apply_layer(io.BytesIO(tar), root, target=target, lower=lower, name="unpriv")
    except UnpackedError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
        return 0
    print(json.dumps(dataclasses.asdict(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
