"""``publisher_factory``: every implemented backend of the table, for the contract tests.

A backend joins the contract tests with a row in ``publish_helpers.BACKENDS_UNDER_TEST``; a
name in ``unpacked.publish.BACKENDS`` without a row fails its tests, so none is forgotten.

Backend-neutral: ``test_publish_contract.py``. ``dir:`` only, by what they look into:
``test_publish_dir.py`` (its staging area, journal, rename faults, file system),
``test_publish_crash.py`` (kills timed on its commit's renames), ``test_publish_lock.py``
(its lock files) and ``test_flusher.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from publish_helpers import BACKENDS_UNDER_TEST, PublisherFactory

from unpacked.publish import BACKENDS


@pytest.fixture(params=BACKENDS)
def publisher_factory(request: pytest.FixtureRequest, tmp_path: Path) -> PublisherFactory:
    name: str = request.param
    backend = BACKENDS_UNDER_TEST.get(name)
    if backend is None:
        pytest.fail(f"backend {name!r} has no row in tests/publish/publish_helpers.py")
    return PublisherFactory(name, backend, tmp_path)
