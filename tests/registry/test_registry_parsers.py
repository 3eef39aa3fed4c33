"""Table tests of the registry package's small parsers: WWW-Authenticate challenges,
Link headers, Retry-After, error bodies, and endpoint selection."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from unpacked.errors import (
    AuthenticationError,
    ConfigError,
    NotFoundError,
    RateLimitedError,
    RegistryError,
)
from unpacked.reference import DOCKER_HUB, Reference
from unpacked.registry import RegistryOptions
from unpacked.registry._challenge import Challenge, parse_challenges
from unpacked.registry._endpoint import endpoint_for, is_loopback
from unpacked.registry._errors import Subject, Transient, status_error, summarize
from unpacked.registry._link import next_link, parse_links
from unpacked.registry._retry import RetryPolicy, parse_retry_after

# --- WWW-Authenticate -------------------------------------------------------------------

HUB = (
    'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
    'scope="repository:library/ubuntu:pull"'
)

CHALLENGES: list[tuple[str, list[tuple[str, dict[str, str], str | None]]]] = [
    ('Basic realm="Registry Realm"', [("basic", {"realm": "Registry Realm"}, None)]),
    (
        HUB,
        [
            (
                "bearer",
                {
                    "realm": "https://auth.docker.io/token",
                    "service": "registry.docker.io",
                    "scope": "repository:library/ubuntu:pull",
                },
                None,
            )
        ],
    ),
    # Scheme and parameter names are case-insensitive; whitespace around '=' is allowed.
    ('BEARER Realm = "r" , Service=s', [("bearer", {"realm": "r", "service": "s"}, None)]),
    # Commas and escaped quotes inside quoted strings.
    (
        r'Bearer realm="a,b", scope="repository:x:pull,push", note="say \"hi\"\\"',
        [
            (
                "bearer",
                {"realm": "a,b", "scope": "repository:x:pull,push", "note": 'say "hi"\\'},
                None,
            )
        ],
    ),
    # Several challenges in one header, parameters of each kept apart.
    (
        'Basic realm="x", Bearer realm="https://t/token",service="svc"',
        [
            ("basic", {"realm": "x"}, None),
            ("bearer", {"realm": "https://t/token", "service": "svc"}, None),
        ],
    ),
    (
        'Newauth realm="apps", type=1, title="Login to \\"apps\\"", Basic realm="simple"',
        [
            ("newauth", {"realm": "apps", "type": "1", "title": 'Login to "apps"'}, None),
            ("basic", {"realm": "simple"}, None),
        ],
    ),
    # token68 forms, alone and followed by another challenge.
    ("Negotiate abc123==", [("negotiate", {}, "abc123==")]),
    (
        'Negotiate YII+/=, Basic realm="r"',
        [("negotiate", {}, "YII+/="), ("basic", {"realm": "r"}, None)],
    ),
    # A bare scheme, and empty list elements.
    ("Basic", [("basic", {}, None)]),
    (", Basic ,, Bearer realm=r ,", [("basic", {}, None), ("bearer", {"realm": "r"}, None)]),
    ('Bearer realm=""', [("bearer", {"realm": ""}, None)]),
    # RFC 7235's grammar makes this a token68, not an empty parameter.
    ("Bearer realm=", [("bearer", {}, "realm=")]),
    ("", []),
]


@pytest.mark.parametrize(("header", "expected"), CHALLENGES)
def test_challenges_parse(
    header: str, expected: list[tuple[str, dict[str, str], str | None]]
) -> None:
    parsed = parse_challenges(header)
    assert [(c.scheme, dict(c.params), c.token68) for c in parsed] == expected


@pytest.mark.parametrize(
    "header",
    [
        'Bearer realm="unterminated',
        'Bearer realm="x" service="y"',  # missing comma
        'Bearer realm="a", realm="b"',
        "Bearer =x",
        'Bearer realm="x",, "stray"',
        'Bearer realm="ends with backslash\\',
    ],
)
def test_malformed_challenges_are_rejected(header: str) -> None:
    with pytest.raises(ValueError, match="malformed WWW-Authenticate"):
        parse_challenges(header)


def test_challenge_lookup_ignores_case() -> None:
    challenge = Challenge("bearer", {"realm": "r"})
    assert challenge.get("Realm") == "r"
    assert challenge.get("service") is None


# --- Link -------------------------------------------------------------------------------

BASE = httpx.URL("http://127.0.0.1:5000/v2/test/tags/list?n=7")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (['</v2/test/tags/list?last=v006&n=7>; rel="next"'], "/v2/test/tags/list?last=v006&n=7"),
        (["<http://127.0.0.1:5000/v2/x?last=a>; rel=next"], "/v2/x?last=a"),
        (['<p>; rel="prev", <n>; rel="next"'], "/v2/test/tags/n"),
        (['<p>; rel="prev"', '<n2>; title="a, b; c"; rel="next last"'], "/v2/test/tags/n2"),
        (['<p>; rel="prev"'], None),
        ([], None),
    ],
)
def test_next_link(values: list[str], expected: str | None) -> None:
    found = next_link(values, BASE)
    assert (found.raw_path.decode() if found else None) == expected


@pytest.mark.parametrize("value", ['rel="next"', "</a> rel=next", '</a>; rel="x'])
def test_malformed_link_is_rejected(value: str) -> None:
    with pytest.raises(ValueError, match="malformed Link"):
        parse_links(value)


# --- Retry-After ------------------------------------------------------------------------


def test_retry_after() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("7", now) == 7.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after("Wed, 01 May 2024 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Wed, 01 May 2024 11:00:00 GMT", now) == 0.0  # in the past
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-3", now) is None


@pytest.mark.parametrize(("spent", "expected"), [(0.0, 4.0), (1.5, 2.5), (5.0, 0.0)])
def test_backoff_counts_from_the_start_of_the_failed_attempt(spent: float, expected: float) -> None:
    """An attempt that hung until its timeout has spaced the requests out already."""
    now = [100.0]
    slept: list[float] = []

    def attempt() -> str:
        if slept:
            return "done"
        now[0] += spent
        raise Transient(RegistryError("timed out"))

    policy = RetryPolicy(
        retries=2,
        backoff_base=4.0,
        backoff_max=8.0,
        max_retry_after=60.0,
        sleep=slept.append,
        jitter=lambda: 1.0,
        clock=lambda: now[0],
    )
    assert policy.run(attempt) == "done"
    assert slept == [pytest.approx(expected)]


# --- error bodies -----------------------------------------------------------------------

SUBJECT = Subject("127.0.0.1:5000", "image test/x:v9", "no credentials for 127.0.0.1:5000")


@pytest.mark.parametrize(
    ("status", "body", "error", "fragment"),
    [
        (404, b"", NotFoundError, "image test/x:v9 not found in registry 127.0.0.1:5000"),
        (
            400,
            b'{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown","detail":{"d":1}}]}',
            NotFoundError,
            'BLOB_UNKNOWN: blob unknown ({"d": 1})',
        ),
        (401, b"", AuthenticationError, "no credentials for 127.0.0.1:5000"),
        (
            403,
            b'{"errors":[{"code":"DENIED","message":"requested access denied"}]}',
            AuthenticationError,
            "refused access to image test/x:v9 (DENIED: requested access denied)",
        ),
        (429, b"", RateLimitedError, "rate-limiting"),
        (418, b"<html>  I am\n a teapot </html>", RegistryError, "418 I'm a teapot"),
    ],
)
def test_status_errors(status: int, body: bytes, error: type[RegistryError], fragment: str) -> None:
    made = status_error(status, body, SUBJECT)
    assert type(made) is error
    assert fragment in str(made)


def test_summaries_are_one_bounded_line() -> None:
    assert summarize(b"<html>\n  <b>oops</b>\n</html>") == "<html> <b>oops</b> </html>"
    assert len(summarize(b"x" * 5000)) == 300
    assert summarize(b'{"errors":[{"code":"A"},{"code":"B","message":"m"}]}') == "A; B: m"


# --- endpoints --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("registry", "loopback"),
    [
        ("localhost", True),
        ("localhost:5000", True),
        ("127.0.0.1:5000", True),
        ("127.1.2.3", True),
        ("[::1]:5000", True),
        ("ghcr.io", False),
        ("10.0.0.1:5000", False),
        ("localhost.example.org", False),
    ],
)
def test_loopback(registry: str, loopback: bool) -> None:
    assert is_loopback(registry) is loopback


@pytest.mark.parametrize(
    ("reference", "options", "expected"),
    [
        (Reference(DOCKER_HUB, "library/ubuntu"), {}, "https://registry-1.docker.io"),
        (Reference("ghcr.io", "org/app"), {}, "https://ghcr.io"),
        (Reference("ghcr.io", "org/app", scheme="http"), {}, "http://ghcr.io"),
        (Reference("localhost:5000", "app"), {}, "http://localhost:5000"),
        (Reference("localhost:5000", "app", scheme="https"), {}, "https://localhost:5000"),
        (Reference("[::1]:5000", "app"), {}, "http://[::1]:5000"),
        (Reference("reg.lan:5000", "app"), {"insecure": {"reg.lan:5000"}}, "http://reg.lan:5000"),
        (
            Reference(DOCKER_HUB, "library/ubuntu"),
            {"mirrors": {DOCKER_HUB: "https://mirror.lan/"}},
            "https://mirror.lan",
        ),
    ],
)
def test_endpoints(reference: Reference, options: dict[str, object], expected: str) -> None:
    endpoint = endpoint_for(reference, RegistryOptions(**options))  # type: ignore[arg-type]
    assert endpoint.base == expected
    assert endpoint.url("a/b/manifests/v1") == f"{expected}/v2/a/b/manifests/v1"


def test_mirror_must_be_a_url() -> None:
    with pytest.raises(ConfigError, match=r"mirror for ghcr\.io"):
        RegistryOptions(mirrors={"ghcr.io": "mirror.lan"})


@pytest.mark.parametrize("name", ["retries", "timeout", "max_concurrency"])
def test_options_are_checked(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        RegistryOptions(**{name: -1})  # type: ignore[arg-type]
