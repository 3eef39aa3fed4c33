"""Differential fuzzing of the applier: random layer stacks against umoci and overlayfs.

``layer_stacks.py`` draws the stacks and holds the comparison and its intended
differences (its docstring lists them). Derandomized and bounded so that CI runs
the same examples every time, in some seconds; ``scripts/fuzz_layers.py`` runs
the same comparison for minutes with random seeds.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from layers.layer_stacks import Layer, check_stack, describe, overlay_available, stacks

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="umoci compares owners and devices: root"),
    pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed"),
]

EXAMPLES = 100


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> bool:
    return overlay_available(tmp_path_factory.mktemp("overlay-probe"))


def test_overlay_is_checked_where_it_can_be(overlay: bool) -> None:
    if not overlay:
        pytest.skip("no kernel overlay here (not root, or overlayfs unavailable)")


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(stack=stacks())
def test_stacks_match_umoci_and_overlay(stack: tuple[Layer, ...], overlay: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="unpacked-fuzz-") as work:
        divergences, _ = check_stack(stack, Path(work), overlay=overlay)
    assert not divergences, (divergences, describe(stack))
