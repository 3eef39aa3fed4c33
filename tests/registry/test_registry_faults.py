"""Fault paths of the registry client against scripted servers (fake, or httpx MockTransport).

Every test states what the client must do when the registry misbehaves: corrupt or
short blobs, dropped connections, rate limits, server errors, slow answers,
redirects to other hosts, oversized or mismatching manifests.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import json
import ssl
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from fakeserver import FakeRegistry, Reply, Seen, error_body
from hypothesis import given, settings
from hypothesis import strategies as st
from regtools import MakeClient, Sleeps, descriptor_of

from unpacked import mediatype
from unpacked.errors import (
    AuthenticationError,
    ConfigError,
    LayerError,
    NotFoundError,
    RateLimitedError,
    RegistryConnectionError,
    RegistryError,
    RegistryProtocolError,
    RegistryUnreachableError,
    VerificationError,
)
from unpacked.reference import Reference
from unpacked.registry import BlobStream
from unpacked.registry._errors import Subject

BLOB = bytes(range(7, 7 + 48))
BLOB_DESCRIPTOR = descriptor_of(BLOB)
REPO = "test/x"
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": mediatype.OCI_MANIFEST,
        "config": {
            "mediaType": mediatype.OCI_CONFIG,
            "digest": "sha256:" + "a" * 64,
            "size": 10,
        },
        "layers": [],
    }
).encode()
MANIFEST_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
MANIFEST_HEADERS = {
    "Content-Type": mediatype.OCI_MANIFEST,
    "Docker-Content-Digest": MANIFEST_DIGEST,
}
BOUNDED = 10.0  # seconds any thread in these tests may be waited for


def blob_path(descriptor_digest: object = BLOB_DESCRIPTOR.digest) -> str:
    return f"/v2/{REPO}/blobs/{descriptor_digest}"


def ref_on(host: str, tag: str | None = "v1", digest: str | None = None) -> Reference:
    return Reference(host, REPO, tag, digest)


class Consumer:
    """A restartable ``consume``: reads in small pieces, counts calls, keeps the last data."""

    def __init__(self, piece: int = 5) -> None:
        self.calls = 0
        self.piece = piece
        self.data = b""

    def __call__(self, stream: BlobStream) -> bytes:
        self.calls += 1
        self.data = b""
        while chunk := stream.read(self.piece):
            self.data += chunk
        return hashlib.sha256(self.data).digest()


def streamed(body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    """A response whose body arrives as a stream, as from a real transport."""
    length = {"Content-Length": str(len(body))}
    return httpx.Response(200, stream=httpx.ByteStream(body), headers={**length, **(headers or {})})


def mock_blob(body: bytes) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == blob_path()
        return streamed(body)

    return httpx.MockTransport(handler)


# --- blob verification ------------------------------------------------------------------


@pytest.mark.parametrize("position", range(len(BLOB)))
def test_blob_with_one_flipped_byte_is_rejected(make_client: MakeClient, position: int) -> None:
    corrupt = bytearray(BLOB)
    corrupt[position] ^= 0x01
    client = make_client(transport=mock_blob(bytes(corrupt)))
    consume = Consumer()
    with pytest.raises(VerificationError) as caught:
        client.fetch_blob(ref_on("127.0.0.1:5000"), BLOB_DESCRIPTOR, consume)
    message = str(caught.value)
    assert str(BLOB_DESCRIPTOR.digest) in message
    assert REPO in message
    assert "digest mismatch" in message
    assert consume.calls == 1  # verification failures are not retried


def test_flipped_byte_is_caught_even_if_consume_stops_early(make_client: MakeClient) -> None:
    corrupt = bytearray(BLOB)
    corrupt[-1] ^= 0xFF
    client = make_client(transport=mock_blob(bytes(corrupt)))
    with pytest.raises(VerificationError):
        client.fetch_blob(ref_on("127.0.0.1:5000"), BLOB_DESCRIPTOR, lambda s: s.read(4))


def test_verification_failure_wins_over_consumers_own_error(make_client: MakeClient) -> None:
    corrupt = bytearray(BLOB)
    corrupt[3] ^= 0x10

    def consume(stream: BlobStream) -> None:
        try:
            stream.read()
            stream.read()
        except VerificationError as exc:
            raise LayerError(f"layer broken: {exc}") from exc

    client = make_client(transport=mock_blob(bytes(corrupt)))
    with pytest.raises(VerificationError):
        client.fetch_blob(ref_on("127.0.0.1:5000"), BLOB_DESCRIPTOR, consume)


def test_intact_blob_streams_through(make_client: MakeClient) -> None:
    client = make_client(transport=mock_blob(BLOB))
    consume = Consumer()
    digest = client.fetch_blob(ref_on("127.0.0.1:5000"), BLOB_DESCRIPTOR, consume)
    assert digest == hashlib.sha256(BLOB).digest()
    assert consume.data == BLOB


def test_served_length_different_from_descriptor_is_rejected_before_consume(
    make_client: MakeClient,
) -> None:
    client = make_client(transport=mock_blob(BLOB + b"extra"))
    consume = Consumer()
    with pytest.raises(VerificationError, match="expected 48"):
        client.fetch_blob(ref_on("127.0.0.1:5000"), BLOB_DESCRIPTOR, consume)
    assert consume.calls == 0


@pytest.mark.parametrize("body", [BLOB[:-1], BLOB + b"!"], ids=["short", "long"])
def test_wrong_size_without_content_length_is_rejected(
    fake: FakeRegistry, make_client: MakeClient, body: bytes
) -> None:
    fake.on("GET", blob_path(), Reply(body=body, chunked=True))
    consume = Consumer()
    with pytest.raises(VerificationError, match="bytes"):
        make_client().fetch_blob(ref_on(fake.host), BLOB_DESCRIPTOR, consume)
    assert len(fake.seen("GET")) == 1


def test_unexpected_content_encoding_is_not_decoded(make_client: MakeClient) -> None:
    # Blob stores sometimes label .tar.gz objects "Content-Encoding: gzip"; the digest is
    # over the stored bytes, so they must reach the consumer as stored.
    import gzip

    stored = gzip.compress(BLOB, mtime=0)
    descriptor = descriptor_of(stored)

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Accept-Encoding"] == "identity"
        return streamed(stored, {"Content-Encoding": "gzip"})

    client = make_client(transport=httpx.MockTransport(handler))
    data = client.get_blob(ref_on("127.0.0.1:5000"), descriptor, 1 << 20)
    assert data == stored


# --- dropped connections and retries ----------------------------------------------------


def test_connection_dropped_mid_blob_is_retried_from_scratch(
    fake: FakeRegistry, make_client: MakeClient, sleeps: Sleeps
) -> None:
    fake.on("GET", blob_path(), Reply(body=BLOB, send_bytes=20), Reply(body=BLOB))
    consume = Consumer(piece=8)
    result = make_client().fetch_blob(ref_on(fake.host), BLOB_DESCRIPTOR, consume)
    assert consume.calls == 2
    assert consume.data == BLOB
    assert result == hashlib.sha256(BLOB).digest()
    assert len(sleeps) == 1
    assert len(fake.seen("GET", blob_path())) == 2


def test_drop_is_retried_even_if_consume_wraps_the_error(
    fake: FakeRegistry, make_client: MakeClient
) -> None:
    fake.on("GET", blob_path(), Reply(body=BLOB, send_bytes=30, chunked=True), Reply(body=BLOB))
    calls = []

    def consume(stream: BlobStream) -> bytes:
        calls.append(1)
        try:
            return stream.read()
        except RegistryError as exc:
            raise LayerError(f"cannot read layer: {exc}") from exc

    data = make_client().fetch_blob(ref_on(fake.host), BLOB_DESCRIPTOR, consume)
    assert data == BLOB
    assert len(calls) == 2


def test_truncated_body_every_time_fails_after_bounded_retries(
    fake: FakeRegistry, make_client: MakeClient, sleeps: Sleeps
) -> None:
    fake.on("GET", blob_path(), Reply(body=BLOB, send_bytes=len(BLOB) // 2))
    consume = Consumer()
    with pytest.raises(RegistryConnectionError) as caught:
        make_client(retries=3).fetch_blob(ref_on(fake.host), BLOB_DESCRIPTOR, consume)
    assert fake.host in str(caught.value)
    assert str(BLOB_DESCRIPTOR.digest) in str(caught.value)
    assert consume.calls == 4
    assert len(sleeps) == 3
    assert sleeps == sorted(sleeps)  # backoff grows


def test_backoff_is_bounded_and_jittered(
    fake: FakeRegistry, make_client: MakeClient, sleeps: Sleeps
) -> None:
    fake.on("GET", f"/v2/{REPO}/manifests/v1", Reply(500))
    client = make_client(retries=6, backoff_base=1.0, backoff_max=4.0)
    with pytest.raises(RegistryError):
        client.get_manifest(ref_on(fake.host))
    assert len(sleeps) == 6
    for attempt, slept in enumerate(sleeps):
        ceiling = min(4.0, 2.0**attempt)
        # Less the few milliseconds the failed attempt took: backoff counts from its start.
        assert ceiling / 2 - 0.2 <= slept <= ceiling


def test_503_then_success(fake: FakeRegistry, make_client: MakeClient, sleeps: Sleeps) -> None:
    path = f"/v2/{REPO}/manifests/v1"
    fake.on("GET", path, Reply(503), Reply(body=MANIFEST, headers=MANIFEST_HEADERS))
    fetched = make_client().get_manifest(ref_on(fake.host))
    assert fetched.raw == MANIFEST
    assert str(fetched.descriptor.digest) == MANIFEST_DIGEST
    assert len(sleeps) == 1
    assert len(fake.seen("GET", path)) == 2


def test_persistent_500_fails_after_bounded_retries(
    fake: FakeRegistry, make_client: MakeClient, sleeps: Sleeps
) -> None:
    path = f"/v2/{REPO}/manifests/v1"
    fake.on("GET", path, Reply(500, body=error_body("UNKNOWN", "storage on fire")))
    with pytest.raises(RegistryError) as caught:
        make_client(retries=2).get_manifest(ref_on(fake.host))
    assert type(caught.value) is RegistryError
    message = str(caught.value)
    assert "500" in message and "storage on fire" in message and fake.host in message
    assert len(fake.seen("GET", path)) == 3
    assert len(sleeps) == 2


def test_429_retry_after_is_waited_out(
    fake: FakeRegistry, make_client: MakeClient, sleeps: Sleeps
) -> None:
    path = f"/v2/{REPO}/manifests/v1"
    limited = Reply(
        429, body=error_body("TOOMANYREQUESTS", "slow down"), headers={"Retry-After": "1"}
    )
    fake.on("GET", path, limited, Reply(body=MANIFEST, headers=MANIFEST_HEADERS))
    make_client().get_manifest(ref_on(fake.host))
    assert sleeps == [pytest.approx(1.0)]


def test_429_retry_after_as_http_date(
    fake: FakeRegistry, make_client: MakeClient, sleeps: Sleeps
) -> None:
    path = f"/v2/{REPO}/manifests/v1"
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    fake.on("GET", path, Reply(429, headers={"Retry-After": when}), Reply(body=MANIFEST))
    make_client().get_manifest(ref_on(fake.host))
    assert len(sleeps) == 1
    assert 25 <= sleeps[0] <= 31


def test_429_asking_too_long_fails_at_once(
    fake: FakeRegistry, make_client: MakeClient, sleeps: Sleeps
) -> None:
    path = f"/v2/{REPO}/manifests/v1"
    fake.on("GET", path, Reply(429, headers={"Retry-After": "3600"}))
    with pytest.raises(RateLimitedError, match="3600"):
        make_client(max_retry_after=60).get_manifest(ref_on(fake.host))
    assert sleeps == []
    assert len(fake.seen("GET", path)) == 1


def test_persistent_429_becomes_rate_limited_error(
    fake: FakeRegistry, make_client: MakeClient, sleeps: Sleeps
) -> None:
    path = f"/v2/{REPO}/manifests/v1"
    fake.on("GET", path, Reply(429, body=error_body("TOOMANYREQUESTS", "pull limit reached")))
    with pytest.raises(RateLimitedError, match="pull limit reached"):
        make_client(retries=2).get_manifest(ref_on(fake.host))
    assert len(sleeps) == 2


def test_slow_response_times_out(fake: FakeRegistry, make_client: MakeClient) -> None:
    path = f"/v2/{REPO}/manifests/v1"
    fake.on("GET", path, Reply(body=MANIFEST, delay=3.0))
    started = time.monotonic()
    with pytest.raises(RegistryConnectionError, match="did not answer in time") as caught:
        make_client(retries=1, timeout=0.3).get_manifest(ref_on(fake.host))
    assert not isinstance(caught.value, RegistryUnreachableError), "it did connect"
    assert time.monotonic() - started < 2.5
    assert len(fake.seen("GET", path)) == 2


def test_connection_refused_names_the_registry(make_client: MakeClient, sleeps: Sleeps) -> None:
    with FakeRegistry() as gone:
        host = gone.host
    with pytest.raises(RegistryUnreachableError) as caught:
        make_client(retries=1).get_manifest(ref_on(host))
    assert host in str(caught.value)
    assert len(sleeps) == 1


# --- redirects --------------------------------------------------------------------------


@pytest.fixture
def other_host() -> FakeRegistry:
    # 127.0.0.2 is loopback too (all of 127/8 is), and a different host from 127.0.0.1.
    try:
        server = FakeRegistry("127.0.0.2").start()
    except OSError:
        server = FakeRegistry().start()  # a different port is a different origin as well
    try:
        yield server  # type: ignore[misc]
    finally:
        server.stop()


def basic_challenge(seen: object) -> Reply:
    return Reply(401, headers={"WWW-Authenticate": 'Basic realm="fake"'})


def test_redirect_to_another_host_does_not_carry_authorization(
    fake: FakeRegistry, other_host: FakeRegistry, make_client: MakeClient
) -> None:
    storage_path = "/storage/blob"

    def registry(seen: object) -> Reply:
        assert hasattr(seen, "headers")
        if "authorization" not in seen.headers:
            return basic_challenge(seen)
        return Reply(307, headers={"Location": f"{other_host.url}{storage_path}"})

    fake.on("GET", blob_path(), registry)
    other_host.on("GET", storage_path, Reply(body=BLOB))
    client = make_client(auths={fake.host: {"username": "alice", "password": "s3cret"}})
    assert client.get_blob(ref_on(fake.host), BLOB_DESCRIPTOR, 1 << 20) == BLOB
    assert any("authorization" in s.headers for s in fake.seen("GET", blob_path()))
    storage_requests = other_host.seen("GET", storage_path)
    assert len(storage_requests) == 1
    assert "authorization" not in storage_requests[0].headers


def test_401_from_redirect_target_is_not_answered_with_our_credentials(
    fake: FakeRegistry, other_host: FakeRegistry, make_client: MakeClient
) -> None:
    storage_path = "/storage/blob"

    def registry(seen: object) -> Reply:
        return Reply(307, headers={"Location": f"{other_host.url}{storage_path}"})

    fake.on("GET", blob_path(), registry)
    other_host.on("GET", storage_path, basic_challenge)
    client = make_client(auths={fake.host: {"username": "alice", "password": "s3cret"}})
    with pytest.raises(AuthenticationError):
        client.get_blob(ref_on(fake.host), BLOB_DESCRIPTOR, 1 << 20)
    assert all("authorization" not in s.headers for s in other_host.seen())


# --- manifests --------------------------------------------------------------------------


def test_manifest_over_the_size_cap_is_rejected(
    fake: FakeRegistry, make_client: MakeClient
) -> None:
    path = f"/v2/{REPO}/manifests/v1"
    big = MANIFEST + b" " * 2000
    fake.on("GET", path, Reply(body=big, headers={"Content-Type": mediatype.OCI_MANIFEST}))
    with pytest.raises(RegistryProtocolError, match="more than the 1024 accepted"):
        make_client(max_manifest_bytes=1024).get_manifest(ref_on(fake.host))


def test_manifest_over_the_size_cap_without_content_length(
    fake: FakeRegistry, make_client: MakeClient
) -> None:
    path = f"/v2/{REPO}/manifests/v1"
    big = MANIFEST + b" " * 5000
    fake.on("GET", path, Reply(body=big, chunked=True))
    with pytest.raises(RegistryProtocolError, match="more than the 1024 accepted"):
        make_client(max_manifest_bytes=1024).get_manifest(ref_on(fake.host))


def test_manifest_not_matching_the_reference_digest_is_rejected(
    fake: FakeRegistry, make_client: MakeClient
) -> None:
    wanted = "sha256:" + "b" * 64
    fake.on("GET", f"/v2/{REPO}/manifests/{wanted}", Reply(body=MANIFEST, headers=MANIFEST_HEADERS))
    with pytest.raises(VerificationError) as caught:
        make_client().get_manifest(ref_on(fake.host, tag=None, digest=wanted))
    assert wanted in str(caught.value) and MANIFEST_DIGEST in str(caught.value)


def test_manifest_is_fetched_by_digest_when_pinned(
    fake: FakeRegistry, make_client: MakeClient
) -> None:
    fake.on("GET", f"/v2/{REPO}/manifests/{MANIFEST_DIGEST}", Reply(body=MANIFEST))
    fetched = make_client().get_manifest(ref_on(fake.host, tag="v1", digest=MANIFEST_DIGEST))
    assert str(fetched.descriptor.digest) == MANIFEST_DIGEST
    assert fetched.descriptor.media_type == mediatype.OCI_MANIFEST  # from mediaType in the JSON
    assert fake.seen("GET", f"/v2/{REPO}/manifests/v1") == []


def test_manifest_not_matching_docker_content_digest_is_rejected(
    fake: FakeRegistry, make_client: MakeClient
) -> None:
    headers = {**MANIFEST_HEADERS, "Docker-Content-Digest": "sha256:" + "c" * 64}
    fake.on("GET", f"/v2/{REPO}/manifests/v1", Reply(body=MANIFEST, headers=headers))
    with pytest.raises(VerificationError, match="digest mismatch"):
        make_client().get_manifest(ref_on(fake.host))


def test_content_type_contradicting_media_type_is_rejected(
    fake: FakeRegistry, make_client: MakeClient
) -> None:
    headers = {"Content-Type": mediatype.DOCKER_MANIFEST}
    fake.on("GET", f"/v2/{REPO}/manifests/v1", Reply(body=MANIFEST, headers=headers))
    with pytest.raises(RegistryProtocolError, match="served as"):
        make_client().get_manifest(ref_on(fake.host))


def test_schema1_manifest_is_rejected_clearly(fake: FakeRegistry, make_client: MakeClient) -> None:
    schema1 = json.dumps({"schemaVersion": 1, "name": REPO, "tag": "v1", "fsLayers": []}).encode()
    headers = {"Content-Type": mediatype.DOCKER_MANIFEST_SCHEMA1_SIGNED}
    fake.on("GET", f"/v2/{REPO}/manifests/v1", Reply(body=schema1, headers=headers))
    with pytest.raises(RegistryProtocolError, match="schema 1"):
        make_client().get_manifest(ref_on(fake.host))


def test_head_without_digest_falls_back_to_get(fake: FakeRegistry, make_client: MakeClient) -> None:
    path = f"/v2/{REPO}/manifests/v1"
    fake.on("HEAD", path, Reply(body=MANIFEST, headers={"Content-Type": mediatype.OCI_MANIFEST}))
    fake.on("GET", path, Reply(body=MANIFEST, headers={"Content-Type": mediatype.OCI_MANIFEST}))
    descriptor = make_client().head_manifest(ref_on(fake.host))
    assert str(descriptor.digest) == MANIFEST_DIGEST
    assert descriptor.size == len(MANIFEST)
    assert len(fake.seen("HEAD", path)) == 1
    assert len(fake.seen("GET", path)) == 1


def test_head_with_digest_needs_no_get(fake: FakeRegistry, make_client: MakeClient) -> None:
    path = f"/v2/{REPO}/manifests/v1"
    fake.on("HEAD", path, Reply(body=MANIFEST, headers=MANIFEST_HEADERS))
    descriptor = make_client().head_manifest(ref_on(fake.host))
    assert str(descriptor.digest) == MANIFEST_DIGEST
    assert descriptor.media_type == mediatype.OCI_MANIFEST
    assert fake.seen("GET") == []


# --- error bodies -----------------------------------------------------------------------


ERROR_CASES = [
    (404, "MANIFEST_UNKNOWN", NotFoundError, "image test/x:v9 not found in registry {host}"),
    (404, "NAME_UNKNOWN", NotFoundError, "image test/x:v9 not found in registry {host}"),
    (401, "UNAUTHORIZED", AuthenticationError, "registry {host} refused access to image"),
    (403, "DENIED", AuthenticationError, "registry {host} refused access to image"),
    (400, "MANIFEST_INVALID", RegistryError, "answered 400 Bad Request for image test/x:v9"),
]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c[1] for c in ERROR_CASES])
def test_registry_error_bodies_become_readable_errors(
    fake: FakeRegistry,
    make_client: MakeClient,
    case: tuple[int, str, type[Exception], str],
) -> None:
    status, code, error, expected = case
    fake.on("GET", f"/v2/{REPO}/manifests/v9", Reply(status, body=error_body(code, "it said no")))
    with pytest.raises(error) as caught:
        make_client().get_manifest(ref_on(fake.host, tag="v9"))
    assert type(caught.value) is error
    message = str(caught.value)
    assert expected.format(host=fake.host) in message
    assert code in message and "it said no" in message


def test_refusal_says_which_credentials_were_used(
    fake: FakeRegistry, make_client: MakeClient
) -> None:
    fake.on("GET", f"/v2/{REPO}/manifests/v1", Reply(403, body=error_body("DENIED", "no")))
    client = make_client(auths={fake.host: {"username": "alice", "password": "x"}})
    with pytest.raises(AuthenticationError, match="user 'alice'"):
        client.get_manifest(ref_on(fake.host))


# --- concurrency ------------------------------------------------------------------------


def test_open_blob_stream_holds_the_registry_slot(
    fake: FakeRegistry, make_client: MakeClient
) -> None:
    fake.on("GET", blob_path(), Reply(body=BLOB))
    fake.on("GET", f"/v2/{REPO}/manifests/v1", Reply(body=MANIFEST, headers=MANIFEST_HEADERS))
    client = make_client(max_concurrency=1)
    streaming, release = threading.Event(), threading.Event()

    def hold(stream: BlobStream) -> bytes:
        data = stream.read(1)
        streaming.set()
        assert release.wait(BOUNDED)
        return data + stream.read()

    blob_result: list[bytes] = []
    blob_thread = threading.Thread(
        target=lambda: blob_result.append(
            client.fetch_blob(ref_on(fake.host), BLOB_DESCRIPTOR, hold)
        )
    )
    blob_thread.start()
    assert streaming.wait(BOUNDED)
    manifest_thread = threading.Thread(target=client.get_manifest, args=(ref_on(fake.host),))
    manifest_thread.start()
    time.sleep(0.3)
    assert fake.seen("GET", f"/v2/{REPO}/manifests/v1") == []  # waiting for the slot
    release.set()
    blob_thread.join(BOUNDED)
    manifest_thread.join(BOUNDED)
    assert not blob_thread.is_alive() and not manifest_thread.is_alive()
    assert blob_result == [BLOB]
    assert len(fake.seen("GET", f"/v2/{REPO}/manifests/v1")) == 1


# --- tag pagination ---------------------------------------------------------------------


def test_tag_pagination_over_120_tags_in_pages_of_7(
    fake: FakeRegistry, make_client: MakeClient
) -> None:
    # What distribution 3 and Docker Hub do: ``n`` per page, ``last`` to resume, and a
    # relative Link to the next page while tags remain.
    path = f"/v2/{REPO}/tags/list"
    all_tags = sorted(f"v{i:03d}" for i in range(120))

    def page(seen: Seen) -> Reply:
        query = parse_qs(urlsplit(seen.path).query)
        n = int(query["n"][0])
        last = query.get("last", [""])[0]
        rest = [t for t in all_tags if t > last]
        body = json.dumps({"name": REPO, "tags": rest[:n]}).encode()
        if len(rest) <= n:
            return Reply(body=body)
        link = f'<{path}?{urlencode({"last": rest[n - 1], "n": n})}>; rel="next"'
        return Reply(body=body, headers={"Link": link})

    fake.on("GET", path, page)
    tags = make_client().list_tags(ref_on(fake.host), page_size=7)
    assert tags == all_tags
    assert len(fake.seen("GET")) == 18  # ceil(120 / 7)


def test_tag_pages_follow_absolute_and_relative_links(
    fake: FakeRegistry, make_client: MakeClient
) -> None:
    path = f"/v2/{REPO}/tags/list"

    def page(seen: Seen) -> Reply:
        query = seen.path.partition("?")[2]
        if "last=b" in query:
            return Reply(body=json.dumps({"name": REPO, "tags": ["c"]}).encode())
        if "last=a" in query:
            link = f'<{fake.url}{path}?n=1&last=b>; rel="next"'
            return Reply(body=json.dumps({"tags": ["b"]}).encode(), headers={"Link": link})
        link = f'<{path}?n=1&last=a>; rel="next"'
        return Reply(body=json.dumps({"tags": ["a"]}).encode(), headers={"Link": link})

    fake.on("GET", path, page)
    assert make_client().list_tags(ref_on(fake.host), page_size=1) == ["a", "b", "c"]
    assert len(fake.seen("GET")) == 3


def test_tag_pagination_loop_is_detected(fake: FakeRegistry, make_client: MakeClient) -> None:
    path = f"/v2/{REPO}/tags/list"
    link = f'<{path}>; rel="next"'
    fake.on("GET", path, Reply(body=b'{"tags": ["a"]}', headers={"Link": link}))
    with pytest.raises(RegistryProtocolError, match="loops"):
        make_client().list_tags(ref_on(fake.host))


def test_tag_page_on_another_host_is_refused(
    fake: FakeRegistry, other_host: FakeRegistry, make_client: MakeClient
) -> None:
    path = f"/v2/{REPO}/tags/list"
    link = f'<{other_host.url}{path}?last=a>; rel="next"'
    fake.on("GET", path, Reply(body=b'{"tags": ["a"]}', headers={"Link": link}))
    with pytest.raises(RegistryProtocolError, match="another host"):
        make_client().list_tags(ref_on(fake.host))
    assert other_host.seen() == []


@settings(max_examples=200, deadline=None)
@given(
    data=st.binary(max_size=3000),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=8),
    sizes=st.lists(st.integers(min_value=1, max_value=700) | st.just(-1), min_size=1, max_size=8),
)
def test_blob_stream_returns_the_bytes_however_chunked_and_read(
    data: bytes, cuts: list[int], sizes: list[int]
) -> None:
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    subject = Subject("127.0.0.1:5000", "blob under test")
    stream = BlobStream(iter(chunks), descriptor_of(data), subject)
    out = b""
    for size in itertools.cycle(sizes):
        assert stream.read(0) == b""
        piece = stream.read(size)
        assert size < 0 or len(piece) <= size
        if not piece:
            break
        out += piece
    assert out == data
    assert stream.verified


# --- TLS --------------------------------------------------------------------------------


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key) for 127.0.0.1, as PEM files."""
    directory = tmp_path_factory.mktemp("tls")
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("unpacked test CA"))
        .issuer_name(_name("unpacked test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (directory / "ca.pem", directory / "server.pem", directory / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


def test_untrusted_certificate_fails_at_once_and_ca_bundle_fixes_it(
    tls_files: tuple[Path, Path, Path], make_client: MakeClient, sleeps: Sleeps
) -> None:
    ca, cert, key = tls_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with FakeRegistry(tls=context) as server:
        server.on("GET", f"/v2/{REPO}/manifests/v1", Reply(body=MANIFEST, headers=MANIFEST_HEADERS))
        ref = Reference(server.host, REPO, "v1", scheme="https")
        with pytest.raises(RegistryUnreachableError, match="certificate we do not trust"):
            make_client().get_manifest(ref)
        assert sleeps == []  # retrying cannot make a certificate trusted
        assert make_client(ca_bundle=ca).get_manifest(ref).raw == MANIFEST


def test_unreadable_ca_bundle_is_a_config_error(tmp_path: Path, make_client: MakeClient) -> None:
    bogus = tmp_path / "bundle.pem"
    bogus.write_text("not a certificate")
    with pytest.raises(ConfigError, match=str(bogus)):
        make_client(ca_bundle=bogus)
