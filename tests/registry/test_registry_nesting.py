"""An index whose entries are indexes, on the real registry: the error says it nests.

Images are read from one level of index; a chain of indexes used to be reported as an
index with no platforms at all (``available: none``).
"""

from __future__ import annotations

import hashlib
import json

import pytest

from support.registry import RegistryServer
from support.samples import SampleImage, SampleImages, put_manifest
from unpacked.cli import EXIT_NOT_FOUND, main
from unpacked.registry._nesting import MAX_PROBED_DEPTH

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def index_over(inner: SampleImage, tag: str) -> SampleImage:
    """An OCI index whose one entry is the index ``inner``, pushed as ``tag``."""
    raw = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": inner.media_type, "digest": inner.digest, "size": inner.size}
            ],
        }
    ).encode()
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    return SampleImage(inner.repository, tag, digest, OCI_INDEX, raw)


@pytest.mark.parametrize(
    ("levels", "said"),
    [(2, "2"), (3, "3"), (MAX_PROBED_DEPTH + 2, f"more than {MAX_PROBED_DEPTH}")],
)
def test_a_chain_of_indexes_is_said_to_nest_too_deeply(
    registry: RegistryServer,
    sample_images: SampleImages,
    capsys: pytest.CaptureFixture[str],
    levels: int,
    said: str,
) -> None:
    outer = sample_images.multi_oci  # an index of two images: level 1
    for level in range(2, levels + 1):
        outer = index_over(outer, f"nest{level}")
        put_manifest(registry, outer, [outer.tag])
    reference = outer.ref(registry)
    code = main(["inspect", reference])
    err = capsys.readouterr().err
    assert code == EXIT_NOT_FOUND, err
    assert "nests too deeply" in err
    assert outer.digest in err
    assert f"image {outer.repository}:{outer.tag} in registry {registry.host}: " in err
    assert f"({said} levels of index before an image)" in err
    assert "available: none" not in err
