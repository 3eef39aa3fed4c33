"""A small malicious registry: whole conversions against a scripted server that lies.

Each case serves a real image (built with ``support.oci``) with one lie: a blob whose
bytes are not its digest, an endless body, a huge ``Content-Length``, a manifest over the
size cap, a redirect loop, a config not matching the manifest. Each must end in one of
our errors, with the exit code the command line gives it and a message naming the
culprit, and publish nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
from fakeserver import FakeRegistry, Reply
from regtools import MakeClient

from support.oci import BuiltImage, TarEntry, build_image, tar_bytes
from unpacked import cli
from unpacked.convert import ConvertOptions, convert_image
from unpacked.errors import UnpackedError
from unpacked.publish import open_publisher
from unpacked.reference import Reference

REPO = "evil/x"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    layers = [
        tar_bytes([TarEntry.file("base/f", b"base " * 2000)]),
        tar_bytes([TarEntry.file("top/f", b"top " * 500)]),
    ]
    return build_image(tmp_path_factory.mktemp("evil") / "oci", layers, tag="1")


def serve(fake: FakeRegistry, image: BuiltImage) -> None:
    """The image, honestly (replace any path's reply by calling ``fake.on`` again)."""
    headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": image.manifest_digest}
    honest = Reply(200, image.manifest_bytes, headers)
    fake.on(
        "HEAD",
        f"/v2/{REPO}/manifests/1",
        Reply(200, b"", {**headers, "Content-Length": str(image.manifest_size)}),
    )
    fake.on("GET", f"/v2/{REPO}/manifests/1", honest)
    fake.on("GET", f"/v2/{REPO}/manifests/{image.manifest_digest}", honest)
    for digest in (image.config_digest, *image.layer_digests):
        fake.on("GET", blob_path(digest), Reply(200, image.blob(digest)))


def blob_path(digest: str) -> str:
    return f"/v2/{REPO}/blobs/{digest}"


def _wrong_layer_bytes(fake: FakeRegistry, image: BuiltImage) -> None:
    digest = image.layer_digests[0]
    body = bytearray(image.blob(digest))
    body[-1] ^= 1
    fake.on("GET", blob_path(digest), Reply(200, bytes(body)))


def _endless_body(fake: FakeRegistry, image: BuiltImage) -> None:
    digest = image.layer_digests[1]
    fake.on(
        "GET", blob_path(digest), Reply(200, image.blob(digest) + b"\0" * (8 << 20), chunked=True)
    )


def _huge_content_length(fake: FakeRegistry, image: BuiltImage) -> None:
    digest = image.layer_digests[0]
    huge = {"Content-Length": str(1 << 40)}
    fake.on("GET", blob_path(digest), Reply(200, image.blob(digest), huge, send_bytes=100))


def _manifest_too_large(fake: FakeRegistry, image: BuiltImage) -> None:
    big = image.manifest_bytes[:-1] + b"," + b'"x":"' + b"y" * (5 << 20) + b'"}'
    digest = "sha256:" + hashlib.sha256(big).hexdigest()
    headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": digest}
    fake.on(
        "HEAD",
        f"/v2/{REPO}/manifests/1",
        Reply(200, b"", {**headers, "Content-Length": str(len(big))}),
    )
    fake.on("GET", f"/v2/{REPO}/manifests/1", Reply(200, big, headers))
    fake.on("GET", f"/v2/{REPO}/manifests/{digest}", Reply(200, big, headers))


def _redirect_loop(fake: FakeRegistry, image: BuiltImage) -> None:
    path = blob_path(image.layer_digests[0])
    fake.on("GET", path, Reply(307, b"", {"Location": f"{fake.url}{path}"}))


def _config_not_its_digest(fake: FakeRegistry, image: BuiltImage) -> None:
    fake.on(
        "GET",
        blob_path(image.config_digest),
        Reply(200, image.config_bytes.replace(b"amd64", b"arm64")),
    )


def _blob_missing(fake: FakeRegistry, image: BuiltImage) -> None:
    fake.on(
        "GET",
        blob_path(image.layer_digests[1]),
        Reply(404, b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}'),
    )


Lie = Callable[[FakeRegistry, BuiltImage], None]

CASES: list[tuple[str, Lie, int, str]] = [
    ("wrong-layer-bytes", _wrong_layer_bytes, 7, "digest mismatch"),
    ("endless-body", _endless_body, 7, "more than the announced"),
    ("huge-content-length", _huge_content_length, 7, "served with 1099511627776 bytes"),
    ("manifest-too-large", _manifest_too_large, 6, "more than the 4194304 accepted"),
    ("redirect-loop", _redirect_loop, 6, "redirects"),
    ("config-not-its-digest", _config_not_its_digest, 7, "digest mismatch"),
    ("blob-missing", _blob_missing, 4, "not found"),
]


@pytest.mark.parametrize(
    ("lie", "code", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_lying_registry_gets_a_clear_error_and_nothing_is_published(  # noqa: PLR0917
    fake: FakeRegistry,
    make_client: MakeClient,
    image: BuiltImage,
    tmp_path: Path,
    lie: Lie,
    code: int,
    message: str,
) -> None:
    serve(fake, image)
    lie(fake, image)
    root = tmp_path / "repo"
    with pytest.raises(UnpackedError) as raised:
        convert_image(
            Reference(fake.host, REPO, "1"),
            client=make_client(),
            publisher=open_publisher(f"dir:{root}"),
            options=ConvertOptions(unpack_workers=1),
        )
    assert cli.exit_code_for(raised.value) == code, raised.value
    assert message in str(raised.value)
    published = [
        path
        for path in root.rglob("*")
        if ".unpacked" not in path.relative_to(root).parts
        and (path.is_symlink() or path.is_file())
        and path.name != ".cvmfscatalog"
    ]
    assert published == []
    assert list(root.glob(".flat/*/*")) == []
