"""The auth flow (bearer tokens, basic credentials) against a scripted registry and token
service behind an httpx MockTransport: what is sent, when, and how often."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import pytest
from regtools import MakeClient, Sleeps

from unpacked import mediatype
from unpacked.errors import AuthenticationError, RegistryProtocolError
from unpacked.reference import Reference

REGISTRY = "127.0.0.1:5000"
REALM = "http://127.0.0.1:5001/token"
SERVICE = "fake-registry"
MANIFEST = json.dumps(
    {
        "schemaVersion": 2,
        "mediaType": mediatype.OCI_MANIFEST,
        "config": {"mediaType": mediatype.OCI_CONFIG, "digest": "sha256:" + "a" * 64, "size": 1},
        "layers": [],
    }
).encode()
DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
ALICE = {REGISTRY: {"username": "alice", "password": "pw:with:colons"}}


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class TokenWorld:
    """A registry that wants bearer tokens, and its token service, in one handler."""

    realm: str = REALM
    challenge: str = f'Bearer realm="{REALM}",service="{SERVICE}"'
    users: dict[str, str] = field(default_factory=lambda: {"alice": "pw:with:colons"})
    token_field: str = "token"
    expires_in: int | None = 300
    token_status: list[int] = field(default_factory=list)
    anonymous_allowed: bool = True
    token_requests: list[httpx.Request] = field(default_factory=list)
    registry_requests: list[httpx.Request] = field(default_factory=list)
    valid: set[str] = field(default_factory=set)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return self._token(request)
        return self._registry(request)

    def _token(self, request: httpx.Request) -> httpx.Response:
        self.token_requests.append(request)
        if self.token_status:
            status = self.token_status.pop(0)
            if status != 200:
                return httpx.Response(status, json={"errors": [{"code": "X", "message": "no"}]})
        given = request.headers.get("Authorization")
        known = {basic(u, p) for u, p in self.users.items()}
        if (given is None and not self.anonymous_allowed) or (given and given not in known):
            return httpx.Response(401, json={"details": "incorrect username or password"})
        token = f"tok-{len(self.token_requests)}"
        self.valid.add(token)
        body: dict[str, object] = {self.token_field: token}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return httpx.Response(200, json=body)

    def _registry(self, request: httpx.Request) -> httpx.Response:
        # A copy: the auth flow re-sends the same request object with new headers.
        self.registry_requests.append(
            httpx.Request(request.method, request.url, headers=request.headers.copy())
        )
        if request.headers.get("Authorization") in {f"Bearer {t}" for t in self.valid}:
            headers = {"Content-Type": mediatype.OCI_MANIFEST, "Docker-Content-Digest": DIGEST}
            return httpx.Response(200, content=MANIFEST, headers=headers)
        headers = {"WWW-Authenticate": self.challenge}
        return httpx.Response(401, headers=headers, json={"errors": [{"code": "UNAUTHORIZED"}]})


def ref(
    repository: str = "test/x", registry: str = REGISTRY, scheme: str | None = None
) -> Reference:
    return Reference(registry, repository, "v1", scheme=scheme)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_anonymous_bearer_flow_and_token_reuse(make_client: MakeClient) -> None:
    world = TokenWorld()
    client = make_client(transport=world.transport())
    assert client.get_manifest(ref()).raw == MANIFEST
    assert len(world.token_requests) == 1
    token_request = world.token_requests[0]
    assert token_request.url.params["service"] == SERVICE
    assert token_request.url.params["scope"] == "repository:test/x:pull"
    assert "Authorization" not in token_request.headers
    assert "account" not in token_request.url.params
    assert [r.headers.get("Authorization") for r in world.registry_requests] == [
        None,
        "Bearer tok-1",
    ]
    client.get_manifest(ref())
    client.head_manifest(ref())
    assert len(world.token_requests) == 1  # cached
    assert [r.headers.get("Authorization") for r in world.registry_requests[2:]] == [
        "Bearer tok-1",
        "Bearer tok-1",
    ]


def test_credentials_go_to_the_token_service(make_client: MakeClient) -> None:
    world = TokenWorld()
    client = make_client(auths=ALICE, transport=world.transport())
    client.get_manifest(ref())
    token_request = world.token_requests[0]
    assert token_request.headers["Authorization"] == basic("alice", "pw:with:colons")
    assert token_request.url.params["account"] == "alice"
    assert all(
        not r.headers.get("Authorization", "").startswith("Basic") for r in world.registry_requests
    )


def test_realm_query_is_kept(make_client: MakeClient) -> None:
    realm = "http://127.0.0.1:5001/token?client=unpacked"
    world = TokenWorld(challenge=f'Bearer realm="{realm}",service="{SERVICE}"')
    make_client(transport=world.transport()).get_manifest(ref())
    params = world.token_requests[0].url.params
    assert params["client"] == "unpacked"
    assert params["scope"] == "repository:test/x:pull"


def test_new_scope_gets_a_token_before_the_first_request(make_client: MakeClient) -> None:
    world = TokenWorld()
    client = make_client(transport=world.transport())
    client.get_manifest(ref("test/x"))
    client.get_manifest(ref("test/y"))
    assert [r.url.params["scope"] for r in world.token_requests] == [
        "repository:test/x:pull",
        "repository:test/y:pull",
    ]
    # The challenge is known by then: the second repository costs no 401 round trip.
    y_requests = [r for r in world.registry_requests if "/test/y/" in r.url.path]
    assert len(y_requests) == 1
    assert y_requests[0].headers["Authorization"] == "Bearer tok-2"


def test_expired_token_is_refreshed(make_client: MakeClient) -> None:
    world = TokenWorld(expires_in=60)
    clock = Clock()
    client = make_client(transport=world.transport(), clock=clock)
    client.get_manifest(ref())
    clock.now += 30
    client.get_manifest(ref())
    assert len(world.token_requests) == 1
    clock.now += 30  # 60 s after issue: expired (with our safety margin, already earlier)
    client.get_manifest(ref())
    assert len(world.token_requests) == 2
    assert world.registry_requests[-1].headers["Authorization"] == "Bearer tok-2"


def test_token_without_expires_in_lives_60_seconds(make_client: MakeClient) -> None:
    world = TokenWorld(expires_in=None)
    clock = Clock()
    client = make_client(transport=world.transport(), clock=clock)
    client.get_manifest(ref())
    clock.now += 50
    client.get_manifest(ref())
    assert len(world.token_requests) == 1
    clock.now += 11
    client.get_manifest(ref())
    assert len(world.token_requests) == 2


def test_access_token_field_is_accepted(make_client: MakeClient) -> None:
    world = TokenWorld(token_field="access_token")
    assert make_client(transport=world.transport()).get_manifest(ref()).raw == MANIFEST


def test_revoked_cached_token_is_replaced_once(make_client: MakeClient) -> None:
    world = TokenWorld()
    client = make_client(transport=world.transport())
    client.get_manifest(ref())
    world.valid.clear()  # the registry no longer accepts tok-1
    assert client.get_manifest(ref()).raw == MANIFEST
    assert len(world.token_requests) == 2
    assert world.registry_requests[-1].headers["Authorization"] == "Bearer tok-2"


def test_revoked_token_is_not_reused_while_the_token_service_recovers(
    make_client: MakeClient, sleeps: Sleeps
) -> None:
    world = TokenWorld()
    client = make_client(transport=world.transport())
    client.get_manifest(ref())
    world.valid.clear()
    world.token_status = [503]
    before = len(world.registry_requests)
    assert client.get_manifest(ref()).raw == MANIFEST
    sent = [r.headers.get("Authorization") for r in world.registry_requests[before:]]
    assert sent == ["Bearer tok-1", "Bearer tok-3"]  # tok-2's request got the 503
    assert len(sleeps) == 1


def test_token_that_never_works_gives_authentication_error(make_client: MakeClient) -> None:
    world = TokenWorld()

    class Forgetful(set[str]):
        def add(self, element: str) -> None:  # tokens are issued but never accepted
            return

    world.valid = Forgetful()
    client = make_client(transport=world.transport())
    with pytest.raises(AuthenticationError, match=f"registry {REGISTRY} refused access"):
        client.get_manifest(ref())
    assert len(world.token_requests) == 1
    assert len(world.registry_requests) == 2


def test_wrong_password_is_refused_by_the_token_service(make_client: MakeClient) -> None:
    world = TokenWorld()
    auths = {REGISTRY: {"username": "alice", "password": "Sesame42"}}
    with pytest.raises(AuthenticationError) as caught:
        make_client(auths=auths, transport=world.transport()).get_manifest(ref())
    message = str(caught.value)
    assert "alice" in message and REGISTRY in message and "refused" in message
    assert "Sesame42" not in message


def test_token_service_503_is_retried(make_client: MakeClient, sleeps: Sleeps) -> None:
    world = TokenWorld(token_status=[503])
    assert make_client(transport=world.transport()).get_manifest(ref()).raw == MANIFEST
    assert len(sleeps) == 1
    assert len(world.token_requests) == 2


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", b'{"token": ""}', b'{"expires_in": 30}'],
    ids=["not-json", "not-object", "empty-token", "no-token"],
)
def test_malformed_token_answer_is_a_protocol_error(make_client: MakeClient, body: bytes) -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return httpx.Response(200, content=body)
        return httpx.Response(401, headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'})

    with pytest.raises(RegistryProtocolError, match="token service"):
        make_client(transport=httpx.MockTransport(handle)).get_manifest(ref())


def test_bearer_without_realm_is_a_protocol_error(make_client: MakeClient) -> None:
    world = TokenWorld(challenge='Bearer service="x"')
    with pytest.raises(RegistryProtocolError, match="without a realm"):
        make_client(transport=world.transport()).get_manifest(ref())


def test_credentials_are_not_sent_over_plain_http_for_a_tls_registry(
    make_client: MakeClient,
) -> None:
    world = TokenWorld()
    tls = "127.0.0.1:5443"
    auths = {tls: {"username": "alice", "password": "pw:with:colons"}}
    client = make_client(auths=auths, transport=world.transport())
    with pytest.raises(AuthenticationError, match="plain HTTP"):
        client.get_manifest(ref(registry=tls, scheme="https"))
    assert world.token_requests == []
    # Anonymous token requests carry nothing secret and may use HTTP.
    anonymous = make_client(transport=world.transport())
    assert anonymous.get_manifest(ref(registry=tls, scheme="https")).raw == MANIFEST


def test_bearer_is_preferred_among_several_challenges(make_client: MakeClient) -> None:
    world = TokenWorld(
        challenge=f'Basic realm="r", Bearer realm="{REALM}",service="{SERVICE}",scope="x"'
    )
    assert make_client(auths=ALICE, transport=world.transport()).get_manifest(ref()).raw
    assert len(world.token_requests) == 1


# --- basic ------------------------------------------------------------------------------


def basic_registry(password: str = "pw:with:colons") -> tuple[httpx.MockTransport, list[str]]:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        given = request.headers.get("Authorization", "")
        seen.append(given)
        if given == basic("alice", password):
            return httpx.Response(200, content=MANIFEST)
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="registry"'})

    return httpx.MockTransport(handle), seen


def test_basic_challenge_is_answered_with_credentials(make_client: MakeClient) -> None:
    transport, seen = basic_registry()
    client = make_client(auths=ALICE, transport=transport)
    client.get_manifest(ref())
    client.get_manifest(ref())
    assert seen == ["", basic("alice", "pw:with:colons"), basic("alice", "pw:with:colons")]


def test_basic_without_credentials_says_none_were_found(make_client: MakeClient) -> None:
    transport, seen = basic_registry()
    with pytest.raises(AuthenticationError, match=f"no credentials for {REGISTRY}"):
        make_client(transport=transport).get_manifest(ref())
    assert seen == [""]


def test_wrong_basic_credentials_are_tried_once(make_client: MakeClient) -> None:
    transport, seen = basic_registry(password="other")
    with pytest.raises(AuthenticationError, match="user 'alice'"):
        make_client(auths=ALICE, transport=transport).get_manifest(ref())
    assert seen == ["", basic("alice", "pw:with:colons")]


def test_credentials_of_one_registry_are_not_sent_to_another(make_client: MakeClient) -> None:
    transport, seen = basic_registry()
    other = "127.0.0.1:6000"
    with pytest.raises(AuthenticationError):
        make_client(auths=ALICE, transport=transport).get_manifest(ref(registry=other))
    assert seen == [""]


def test_mirror_gets_its_own_credentials_not_the_registrys(make_client: MakeClient) -> None:
    requests: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if request.headers.get("Authorization") == basic("bob", "m"):
            return httpx.Response(200, content=MANIFEST)
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="mirror"'})

    mirror = "127.0.0.1:7000"
    auths = {**ALICE, mirror: {"username": "bob", "password": "m"}}
    client = make_client(
        auths=auths, transport=httpx.MockTransport(handle), mirrors={REGISTRY: f"http://{mirror}"}
    )
    client.get_manifest(ref())
    assert {r.url.netloc.decode() for r in requests} == {mirror}
    assert requests[-1].headers["Authorization"] == basic("bob", "m")


Handler = Callable[[httpx.Request], httpx.Response]
