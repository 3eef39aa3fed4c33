"""The backend table: one list of names that the wish list, the CLI and ``open_publisher`` read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from unpacked.errors import ConfigError
from unpacked.publish import BACKEND_TABLE, BACKENDS, backend_of, canonical_spec, open_publisher
from unpacked.wishlist._repository import repository_spec


def test_the_table_knows_dir_and_cvmfs_and_implements_dir() -> None:
    assert sorted(BACKEND_TABLE) == ["cvmfs", "dir"]
    assert BACKENDS == ("dir",)
    assert backend_of("dir:/x") is BACKEND_TABLE["dir"]
    assert backend_of("cvmfs:a.b") is BACKEND_TABLE["cvmfs"]
    assert backend_of("/dir:x") is None and backend_of("dir") is None


def test_a_known_but_unimplemented_backend_is_refused_as_today(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        open_publisher("cvmfs:unpacked.cern.ch")
    assert (
        str(info.value) == "unknown publisher 'cvmfs:unpacked.cern.ch': expected one of dir:<path>"
    )
    assert open_publisher(f"dir:{tmp_path}").spec == f"dir:{tmp_path}"


@pytest.mark.parametrize(
    ("spec", "canonical"),
    [
        ("dir:/srv//x/../y/", "dir:/srv/x/../y"),  # as written, not resolved
        ("cvmfs:unpacked.cern.ch/", "cvmfs:unpacked.cern.ch"),
        ("cvmfs:a.org/lease/path", "cvmfs:a.org/lease/path"),
    ],
)
def test_specs_of_every_known_backend_are_normalised(spec: str, canonical: str) -> None:
    assert canonical_spec(spec) == canonical
    assert repository_spec(spec) == canonical


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nfs:/x", "expected 'dir:/absolute/path' or 'cvmfs:repository.name'"),
        ("/srv/x", "expected 'dir:/absolute/path' or 'cvmfs:repository.name'"),
        ("dir:relative", "a dir: repository needs an absolute path, got 'relative'"),
        ("cvmfs:a.org/x/../y", "bad lease path 'x/../y'"),
        ("cvmfs:-bad", "bad CernVM-FS repository name '-bad'"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        canonical_spec(spec)
