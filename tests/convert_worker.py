"""The command line, pausing before one step of its commit: for crash tests (not a test).

    python tests/convert_worker.py PAUSE_AT MARKER unpacked-arguments...

Before the PAUSE_AT-th journal step of a commit it writes MARKER and sleeps (bounded),
so that a test can kill it at an exact point inside a commit: timing alone hits a
commit of a few milliseconds only by luck.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from unpacked.cli import main
from unpacked.publish import _journal

PAUSE_LIMIT = 60.0  # seconds; the test kills the process long before


def pause_before_step(pause_at: int, marker: Path) -> None:
    redo = _journal.redo
    count = [0]

    def counted(*args: Any, **kwargs: Any) -> None:
        count[0] += 1
        if count[0] == pause_at:
            marker.write_text(f"step {pause_at}\n")
            time.sleep(PAUSE_LIMIT)
        redo(*args, **kwargs)

    _journal.redo = counted  # type: ignore[assignment]


if __name__ == "__main__":
    pause_before_step(int(sys.argv[1]), Path(sys.argv[2]))
    sys.exit(main(sys.argv[3:]))
