"""The registry client against real docker-registry servers (no auth, htpasswd, token).

The three servers share one storage, so every sample image is resolved through each
auth mode and compared byte for byte with what the registry holds.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from regtools import auth_file

from support.oci import TarEntry, build_image, tar_bytes
from support.registry import RegistryServer
from support.samples import SampleImage, SampleImages
from support.tokens import TokenIssuer
from unpacked.errors import AuthenticationError, NotFoundError, VerificationError
from unpacked.platform import DEFAULT, Platform
from unpacked.reference import Reference
from unpacked.registry import BlobStream, RegistryClient, RegistryOptions

SERVERS = ["registry", "basic_registry", "token_registry"]
SINGLE = ["simple", "simple_docker", "public"]
LISTS = ["multi_oci", "multi_docker"]


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest, sample_images: SampleImages) -> RegistryServer:
    found: RegistryServer = request.getfixturevalue(request.param)
    return found


def credentials(server: RegistryServer, password: str | None = None) -> dict[str, dict[str, str]]:
    if server.username is None:
        return {}
    return {
        server.host: {"username": server.username, "password": password or server.password or ""}
    }


class CountingTransport(httpx.BaseTransport):
    """A real HTTP transport that remembers the requests it sent."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.sent: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def client(server: RegistryServer, tmp_path: Path) -> Iterator[RegistryClient]:
    options = RegistryOptions(auth_file=auth_file(tmp_path, credentials(server)))
    with RegistryClient(options) as made:
        yield made


def ref_of(server: RegistryServer, image: SampleImage, tag: str | None = None) -> Reference:
    return Reference(server.host, image.repository, tag or image.tag)


@pytest.mark.parametrize("name", SINGLE)
def test_resolves_single_images(
    server: RegistryServer, client: RegistryClient, sample_images: SampleImages, name: str
) -> None:
    sample: SampleImage = getattr(sample_images, name)
    image = client.resolve_image(ref_of(server, sample))
    assert image.index is None
    assert image.top == image.manifest_descriptor
    assert str(image.manifest_descriptor.digest) == sample.digest
    assert image.manifest_descriptor.media_type == sample.media_type
    assert image.manifest_raw == image.top_raw == sample.manifest_bytes
    assert image.config_raw == sample.config_bytes
    assert str(image.image_id) == sample.config_digest
    assert [str(layer.digest) for layer in image.layers] == list(sample.layer_digests)
    assert [str(d) for d in image.config.diff_ids] == list(sample.diff_ids)
    assert str(image.platform) == sample.platform


PLATFORM_CASES = [
    ("linux/amd64", "linux/amd64"),
    ("linux/x86_64", "linux/amd64"),
    ("linux/arm64", "linux/arm64/v8"),
    ("linux/aarch64", "linux/arm64/v8"),
    ("linux/arm64/v8", "linux/arm64/v8"),
]


@pytest.mark.parametrize("name", LISTS)
@pytest.mark.parametrize("case", PLATFORM_CASES, ids=[c[0] for c in PLATFORM_CASES])
def test_resolves_indexes_per_platform(
    server: RegistryServer,
    client: RegistryClient,
    sample_images: SampleImages,
    name: str,
    case: tuple[str, str],
) -> None:
    asked, expected = case
    sample: SampleImage = getattr(sample_images, name)
    image = client.resolve_image(ref_of(server, sample), Platform.parse(asked))
    assert str(image.top.digest) == sample.digest
    assert image.top.media_type == sample.media_type
    assert image.top_raw == sample.manifest_bytes
    assert image.index is not None
    child = sample.for_platform(expected)
    assert str(image.manifest_descriptor.digest) == child.digest
    assert image.manifest_raw == child.manifest_bytes
    assert image.config_raw == child.config_bytes
    assert str(image.platform) == expected
    assert str(image.config.platform) == expected


@pytest.mark.parametrize("name", LISTS)
def test_platforms_and_missing_platform(
    server: RegistryServer, client: RegistryClient, sample_images: SampleImages, name: str
) -> None:
    sample: SampleImage = getattr(sample_images, name)
    ref = ref_of(server, sample)
    assert client.platforms(ref) == (DEFAULT, Platform.parse("linux/arm64/v8"))
    with pytest.raises(NotFoundError) as caught:
        client.resolve_image(ref, Platform.parse("linux/s390x"))
    assert "available: linux/amd64, linux/arm64/v8" in str(caught.value)
    assert server.host in str(caught.value)


def test_single_image_of_another_platform_is_not_found(
    server: RegistryServer, client: RegistryClient, sample_images: SampleImages
) -> None:
    ref = ref_of(server, sample_images.simple)
    assert client.platforms(ref) == (DEFAULT,)
    with pytest.raises(NotFoundError, match="is for linux/amd64 only"):
        client.resolve_image(ref, Platform.parse("linux/arm64"))


@pytest.mark.parametrize("name", [*SINGLE, *LISTS])
def test_head_gives_the_same_descriptor_as_get(
    server: RegistryServer, client: RegistryClient, sample_images: SampleImages, name: str
) -> None:
    sample: SampleImage = getattr(sample_images, name)
    ref = ref_of(server, sample)
    head = client.head_manifest(ref)
    got = client.get_manifest(ref)
    assert head == got.descriptor
    assert str(head.digest) == sample.digest
    assert head.size == sample.size
    pinned = Reference(server.host, sample.repository, None, sample.digest)
    assert client.head_manifest(pinned) == head
    assert client.get_manifest(pinned).raw == sample.manifest_bytes


def test_blobs_stream_and_verify(
    server: RegistryServer, client: RegistryClient, sample_images: SampleImages
) -> None:
    sample = sample_images.simple
    assert sample.built is not None
    image = client.resolve_image(ref_of(server, sample))
    streams: list[BlobStream] = []

    def consume(stream: BlobStream) -> bytes:
        streams.append(stream)
        data = b""
        while piece := stream.read(100):
            assert len(piece) <= 100
            data += piece
        return data

    for layer in image.layers:
        data = client.fetch_blob(image.reference, layer, consume)
        assert data == sample.built.blob(str(layer.digest))
        assert streams[-1].verified
    assert len(streams) == len(image.layers)


def test_tag_list_with_page_size(
    server: RegistryServer, sample_images: SampleImages, tmp_path: Path
) -> None:
    # distribution 2.8 ignores ``n`` on tag lists (pagination came with 3.0) and answers
    # in one page; following Link pages is exercised against the fake server
    # (test_registry_faults.py::test_tag_pagination_over_120_tags_in_pages_of_7).
    transport = CountingTransport()
    options = RegistryOptions(auth_file=auth_file(tmp_path, credentials(server)))
    with RegistryClient(options, transport=transport) as client:
        tags = client.list_tags(ref_of(server, sample_images.many_tags), page_size=7)
        assert sorted(tags) == sorted(sample_images.many_tags.tags)
        pages = [r for r in transport.sent if r.url.path == "/v2/test/tags/tags/list"]
        assert pages and all(r.url.params.get("n") == "7" for r in pages)
        assert client.list_tags(ref_of(server, sample_images.many_tags)) == tags


def test_unknown_tag_is_not_found(
    server: RegistryServer, client: RegistryClient, sample_images: SampleImages
) -> None:
    ref = Reference(server.host, "test/simple", "v9")
    with pytest.raises(NotFoundError) as caught:
        client.resolve_image(ref)
    assert str(caught.value).startswith(
        f"image test/simple:v9 not found in registry {server.host} (MANIFEST_UNKNOWN"
    )
    with pytest.raises(NotFoundError, match="not found"):
        client.head_manifest(ref)


def test_unknown_repository_is_not_found(
    server: RegistryServer, client: RegistryClient, sample_images: SampleImages
) -> None:
    ref = Reference(server.host, "test/nonexistent", "v1")
    with pytest.raises(NotFoundError, match="image test/nonexistent:v1 not found in registry"):
        client.get_manifest(ref)
    with pytest.raises(NotFoundError) as caught:
        client.list_tags(ref)
    assert str(caught.value).startswith(
        f"tags of test/nonexistent not found in registry {server.host} (NAME_UNKNOWN"
    )


# --- auth specifics ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["basic_registry", "token_registry"])
def test_wrong_credentials_are_an_authentication_error(
    request: pytest.FixtureRequest, sample_images: SampleImages, tmp_path: Path, mode: str
) -> None:
    server: RegistryServer = request.getfixturevalue(mode)
    options = RegistryOptions(auth_file=auth_file(tmp_path, credentials(server, "Sesame42")))
    with RegistryClient(options) as client, pytest.raises(AuthenticationError) as caught:
        client.resolve_image(ref_of(server, sample_images.simple))
    message = str(caught.value)
    assert server.host in message and repr(server.username) in message
    assert "Sesame42" not in message


@pytest.mark.parametrize("mode", ["basic_registry", "token_registry"])
def test_private_image_without_credentials_is_refused(
    request: pytest.FixtureRequest, sample_images: SampleImages, tmp_path: Path, mode: str
) -> None:
    server: RegistryServer = request.getfixturevalue(mode)
    options = RegistryOptions(auth_file=auth_file(tmp_path))
    expected = f"no credentials for {server.host}"
    with RegistryClient(options) as client, pytest.raises(AuthenticationError, match=expected):
        client.resolve_image(ref_of(server, sample_images.simple))


def test_anonymous_token_pull_of_a_public_image(
    token_registry: RegistryServer,
    token_issuer: TokenIssuer,
    sample_images: SampleImages,
    tmp_path: Path,
) -> None:
    token_issuer.reset()
    with RegistryClient(RegistryOptions(auth_file=auth_file(tmp_path))) as client:
        image = client.resolve_image(ref_of(token_registry, sample_images.public))
        assert str(image.manifest_descriptor.digest) == sample_images.public.digest
        client.fetch_blob(image.reference, image.layers[0], lambda s: s.read())
    assert token_issuer.count("repository:public/hello:pull") == 1
    assert [i.username for i in token_issuer.issued] == [None]


def test_tokens_are_cached_and_refreshed_after_expiry(
    token_registry: RegistryServer,
    token_issuer: TokenIssuer,
    sample_images: SampleImages,
    tmp_path: Path,
) -> None:
    now = [1000.0]
    scope = "repository:test/simple:pull"
    token_issuer.reset()
    options = RegistryOptions(auth_file=auth_file(tmp_path, credentials(token_registry)))
    with RegistryClient(options, clock=lambda: now[0]) as client:
        ref = ref_of(token_registry, sample_images.simple)
        image = client.resolve_image(ref)  # manifest and config
        client.head_manifest(ref)
        for layer in image.layers:
            client.fetch_blob(ref, layer, lambda s: s.read(10))
        assert token_issuer.count(scope) == 1
        assert token_issuer.count() == 1
        now[0] += token_issuer.expires_in + 1
        client.head_manifest(ref)
        assert token_issuer.count(scope) == 2
        client.list_tags(ref)
        assert token_issuer.count(scope) == 2
    assert token_issuer.refused == 0


def test_short_lived_tokens_from_the_issuer_are_honoured(
    token_registry: RegistryServer,
    token_issuer: TokenIssuer,
    sample_images: SampleImages,
    tmp_path: Path,
) -> None:
    now = [1000.0]
    token_issuer.reset()
    options = RegistryOptions(auth_file=auth_file(tmp_path, credentials(token_registry)))
    with token_issuer.expiring_in(20), RegistryClient(options, clock=lambda: now[0]) as client:
        ref = ref_of(token_registry, sample_images.simple)
        client.head_manifest(ref)
        now[0] += 10
        client.head_manifest(ref)
        assert token_issuer.count() == 1
        now[0] += 10  # 20 s: gone
        client.head_manifest(ref)
        assert token_issuer.count() == 2


@pytest.mark.parametrize("mode", ["basic_registry", "token_registry"])
def test_credentials_from_registry_auth_file(
    request: pytest.FixtureRequest,
    sample_images: SampleImages,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
) -> None:
    server: RegistryServer = request.getfixturevalue(mode)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    path = auth_file(tmp_path, credentials(server))
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(path))
    ref = ref_of(server, sample_images.simple)
    with RegistryClient() as client:
        assert str(client.head_manifest(ref).digest) == sample_images.simple.digest
    path.write_text('{"auths": {}}')
    with RegistryClient() as client, pytest.raises(AuthenticationError, match=str(path)):
        client.head_manifest(ref)


# --- corruption in the registry's own storage -------------------------------------------


def test_corrupted_blob_in_registry_storage_is_rejected(
    registry: RegistryServer,
    registry_storage: Path,
    push_image: object,
    tmp_path: Path,
) -> None:
    payload = os.urandom(4096)  # unique content: no other image shares these blobs
    built = build_image(tmp_path / "layout", [tar_bytes([TarEntry.file("data", payload)])])
    pushed = push_image(built, "test/corrupt:v1")  # type: ignore[operator]
    layer = pushed.layer_digests[0]
    hexpart = layer.split(":", 1)[1]
    data_path = (
        registry_storage / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"
    )
    blob = bytearray(data_path.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    data_path.write_bytes(bytes(blob))
    with RegistryClient(RegistryOptions(auth_file=auth_file(tmp_path))) as client:
        image = client.resolve_image(Reference(registry.host, "test/corrupt", "v1"))
        with pytest.raises(VerificationError) as caught:
            client.fetch_blob(image.reference, image.layers[0], lambda s: s.read())
    assert layer in str(caught.value) and "test/corrupt" in str(caught.value)
    assert hashlib.sha256(bytes(blob)).hexdigest() in str(caught.value)


def test_one_client_serves_many_threads(
    token_registry: RegistryServer, sample_images: SampleImages, tmp_path: Path
) -> None:
    refs = [
        ref_of(token_registry, image)
        for image in (sample_images.simple, sample_images.simple_docker, sample_images.multi_oci)
    ] * 4
    options = RegistryOptions(
        auth_file=auth_file(tmp_path, credentials(token_registry)), max_concurrency=2
    )
    with RegistryClient(options) as client, ThreadPoolExecutor(max_workers=6) as pool:
        images = list(pool.map(client.resolve_image, refs, timeout=60))
        blobs = list(
            pool.map(
                lambda image: client.get_blob(image.reference, image.layers[0], 1 << 20),
                images,
                timeout=60,
            )
        )
    assert [str(i.top.digest) for i in images[:3]] == [
        sample_images.simple.digest,
        sample_images.simple_docker.digest,
        sample_images.multi_oci.digest,
    ]
    assert all(i.top == j.top for i, j in zip(images, images[3:], strict=False))
    assert all(
        hashlib.sha256(blob).hexdigest() == image.layers[0].digest.hex
        for blob, image in zip(blobs, images, strict=True)
    )
