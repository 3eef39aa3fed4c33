"""The measured child of ``verify_deep.py``: convert one image, with or without the layers'
content indexes (the only difference between the two contenders).

    python bench/_convert_worker.py <registry>/<repository>:<tag> <repository dir> index|no-index
"""

from __future__ import annotations

import sys

from unpacked.convert import ConvertOptions, convert_image
from unpacked.publish import open_publisher
from unpacked.reference import parse
from unpacked.registry import RegistryClient


def main(argv: list[str]) -> int:
    remote, repository, index = argv
    options = ConvertOptions(content_index=index == "index")
    with RegistryClient() as client:
        convert_image(
            parse(remote),
            client=client,
            publisher=open_publisher(f"dir:{repository}"),
            options=options,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
