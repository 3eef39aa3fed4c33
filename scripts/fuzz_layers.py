#!/usr/bin/env python3
"""Differential fuzzing of the layer applier for N minutes, with random seeds.

    .venv/bin/python scripts/fuzz_layers.py --minutes 10 --out fuzz.json
    .venv/bin/python scripts/fuzz_layers.py --replay fuzz.json   # its reproducers again

Runs the comparison of ``tests/layers/test_fuzz.py`` (``layer_stacks.check_stack``:
FLAT against ``umoci raw unpack``, and as root the kernel overlay of the LAYERFS
directories against FLAT) on stacks drawn with a fresh seed per batch, and writes
JSON: stacks tried, stacks whose overlay was compared, divergences by kind and one
reproducer (the stack, and the seed) per kind. Needs root and umoci.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from layers.layer_stacks import (
    Layer,
    check_stack,
    describe,
    from_description,
    overlay_available,
    stacks,
)

BATCH = 200


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--replay", type=Path, help="check the reproducers of an --out file")
    args = parser.parse_args(argv)
    if args.replay is not None:
        return replay(args.replay)
    if args.minutes is None or args.out is None:
        parser.error("--minutes and --out are needed (or --replay)")
    deadline = time.monotonic() + args.minutes * 60
    seeds: list[int] = []
    figures: dict[str, object] = {"stacks": 0, "overlay_compared": 0, "seeds": seeds}
    kinds: dict[str, int] = {}
    reproducers: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="unpacked-fuzz-") as scratch:
        overlay = overlay_available(Path(scratch))
        figures["overlay"] = overlay
        while time.monotonic() < deadline:
            batch_seed = random.getrandbits(32)
            seeds.append(batch_seed)

            @seed(batch_seed)
            @settings(
                max_examples=BATCH,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(stack=stacks())
            def run(stack: tuple[Layer, ...]) -> None:
                if time.monotonic() >= deadline:
                    return
                with tempfile.TemporaryDirectory(dir=scratch) as work:
                    divergences, compared = check_stack(stack, Path(work), overlay=overlay)
                figures["stacks"] += 1  # type: ignore[operator]
                figures["overlay_compared"] += int(compared)  # type: ignore[operator]
                for divergence in divergences:
                    kinds[divergence.kind] = kinds.get(divergence.kind, 0) + 1
                    reproducers.setdefault(
                        divergence.kind,
                        {"seed": seeds[-1], "detail": divergence.detail, "stack": describe(stack)},
                    )

            run()
    figures["divergences"] = kinds
    figures["reproducers"] = reproducers
    args.out.write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k not in ("reproducers", "seeds")}))
    return 0


def replay(path: Path) -> int:
    """Check each reproducer of a previous run again; print what still diverges."""
    reproducers = json.loads(path.read_text())["reproducers"]
    left = 0
    with tempfile.TemporaryDirectory(prefix="unpacked-fuzz-") as scratch:
        overlay = overlay_available(Path(scratch))
        for kind, found in reproducers.items():
            with tempfile.TemporaryDirectory(dir=scratch) as work:
                stack = from_description(found["stack"])
                divergences, _ = check_stack(stack, Path(work), overlay=overlay)
            left += bool(divergences)
            print(f"{kind} (seed {found['seed']}): {[d.kind for d in divergences] or 'fixed'}")
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
