"""Build the demo image and push it to a local registry (used by scripts/demo.sh).

The image is made from scratch with the test suite's OCI builder, so the demo needs
no network beyond 127.0.0.1: two layers, a small file tree, no shell.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.oci import BuiltImage, TarEntry, build_image, tar_bytes
from support.registry import skopeo_copy

OS_RELEASE = b"""PRETTY_NAME="unpacked demo image"
NAME="unpacked-demo"
ID=unpacked-demo
VERSION_ID="1.0"
"""
HELLO = b"""#!/bin/sh
echo "Hello from an image that was never pulled by this job."
"""
README = b"This file lives in the second layer of demo/hello:1.0.\n"


def demo_image(layout: Path) -> BuiltImage:
    base = tar_bytes(
        [
            TarEntry.dir("etc"),
            TarEntry.file("etc/os-release", OS_RELEASE),
            TarEntry.dir("usr"),
            TarEntry.dir("usr/bin"),
            TarEntry.symlink("bin", "usr/bin"),
            TarEntry.dir("tmp", mode=0o1777),
            TarEntry.dir("var"),
            TarEntry.dir("var/empty", mode=0o555),
        ]
    )
    app = tar_bytes(
        [
            TarEntry.file("hello.sh", HELLO, mode=0o755),
            TarEntry.dir("usr/share"),
            TarEntry.dir("usr/share/doc"),
            TarEntry.dir("usr/share/doc/hello"),
            TarEntry.file("usr/share/doc/hello/README", README),
        ]
    )
    return build_image(
        layout,
        [base, app],
        tag="1.0",
        config={"Cmd": ["/hello.sh"], "Labels": {"org.opencontainers.image.title": "hello"}},
    )


def wait_ready(host: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://{host}/v2/", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"registry at {host} did not answer within {timeout:.0f}s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--registry", required=True, help="HOST:PORT of a plain-HTTP registry")
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--repository", default="demo/hello:1.0")
    parser.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()
    wait_ready(args.registry, args.timeout)
    image = demo_image(args.workdir / "demo-layout")
    digest = skopeo_copy(image.oci_ref, f"docker://{args.registry}/{args.repository}")
    print(f"pushed {args.registry}/{args.repository}")
    print(f"  manifest {digest}")
    for layer, size in zip(image.layer_digests, image.layer_sizes, strict=True):
        print(f"  layer    {layer}  {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
