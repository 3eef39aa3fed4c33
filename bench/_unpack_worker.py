"""The measured child of ``unpack_layers.py`` (a): pull one image and unpack it flat.

Kept apart from the benchmark so that its start-up imports only ``unpacked``,
like the tool's own command would, and not the test-support builders.

    python bench/_unpack_worker.py <registry>/<repository>:<tag> <new root directory> [--last]

With ``--last`` only the image's top layer is unpacked: the floor for converting an image
whose other layers are already in the repository.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from unpacked.layers import Target, unpack_layer
from unpacked.reference import parse
from unpacked.registry import RegistryClient


def main(argv: list[str]) -> int:
    remote, root_arg, *flags = argv
    reference = parse(remote)
    root = Path(root_arg)
    root.mkdir(parents=True)
    with RegistryClient() as client:
        image = client.resolve_image(reference)
        layers = list(zip(image.layers, image.config.diff_ids, strict=True))
        for descriptor, diff_id in layers[-1:] if "--last" in flags else layers:
            consume = functools.partial(
                unpack_layer,
                media_type=descriptor.media_type,
                diff_id=diff_id,
                root=root,
                target=Target.FLAT,
                name=str(descriptor.digest),
            )
            client.fetch_blob(reference, descriptor, consume)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
