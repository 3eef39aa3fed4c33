"""Image references: table-driven good and bad inputs, round trips, wildcards, real wish lists."""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from unpacked.digest import Digest
from unpacked.errors import InvalidReferenceError, UnpackedError
from unpacked.reference import (
    DEFAULT_TAG,
    DOCKER_HUB,
    DOCKER_HUB_API,
    Reference,
    parse,
    tag_matches,
)

HUB = DOCKER_HUB
D = "sha256:" + "0123456789abcdef" * 4
D512 = "sha512:" + "fedcba9876543210" * 8


@dataclass(frozen=True)
class Good:
    text: str
    registry: str
    repository: str
    tag: str | None
    digest: str | None = None
    scheme: str | None = None
    canonical: str = ""  # str(); defaults to the scheme-less docker form
    public: str | None = ""  # public_name; None for wildcards; defaults to canonical w/o scheme

    def expected_str(self) -> str:
        return self.canonical or _joined(self.registry, self.repository, self.tag, self.digest)

    def expected_public(self) -> str | None:
        if self.public is None or self.public:
            return self.public
        if self.tag is None:
            return f"{self.registry}/{self.repository}@{self.digest}"
        return f"{self.registry}/{self.repository}:{self.tag}"


def _joined(registry: str, repository: str, tag: str | None, digest: str | None) -> str:
    return (
        f"{registry}/{repository}" + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    )


GOOD = [
    # docker short forms and every Docker Hub spelling
    Good("ubuntu", HUB, "library/ubuntu", "latest"),
    Good("ubuntu:22.04", HUB, "library/ubuntu", "22.04"),
    Good("user/repo", HUB, "user/repo", "latest"),
    Good("docker.io/library/ubuntu", HUB, "library/ubuntu", "latest"),
    Good("docker.io/ubuntu:22.04", HUB, "library/ubuntu", "22.04"),
    Good("index.docker.io/x/y", HUB, "x/y", "latest"),
    Good("registry-1.docker.io/x", HUB, "library/x", "latest"),
    Good("registry.hub.docker.com/library/ubuntu:22.04", HUB, "library/ubuntu", "22.04"),
    Good("Docker.IO/ubuntu", HUB, "library/ubuntu", "latest"),
    Good("localhost", HUB, "library/localhost", "latest"),  # no '/': a Hub repository
    Good("localhost:5000", HUB, "library/localhost", "5000"),  # as docker reads it
    # other registries, ports, depth
    Good("ghcr.io/org/repo:tag", "ghcr.io", "org/repo", "tag"),
    Good("GHCR.io/org/repo", "ghcr.io", "org/repo", "latest"),
    Good("localhost:5000/x", "localhost:5000", "x", "latest"),
    Good("localhost/x", "localhost", "x", "latest"),
    Good("LocalHost/x", "localhost", "x", "latest"),
    Good("[::1]:5000/x", "[::1]:5000", "x", "latest"),
    Good("[::1]/x", "[::1]", "x", "latest"),
    Good("[0:0:0:0:0:0:0:1]:5000/x:v", "[::1]:5000", "x", "v"),
    Good("[2001:DB8::A]:443/x", "[2001:db8::a]:443", "x", "latest"),
    Good("127.0.0.1:5000/a/b/c/d/e:v1", "127.0.0.1:5000", "a/b/c/d/e", "v1"),
    Good("host:1/x", "host:1", "x", "latest"),
    Good("host:65535/x", "host:65535", "x", "latest"),
    Good("docker.io:443/x", "docker.io:443", "x", "latest"),  # a port makes it another host
    Good("quay.io/org/sub/team/app:1.0", "quay.io", "org/sub/team/app", "1.0"),
    Good(
        "my-reg.example.com/a__b/c-d--e/f.g_h:Tag_1.-x",
        "my-reg.example.com",
        "a__b/c-d--e/f.g_h",
        "Tag_1.-x",
    ),
    Good("x:_t", HUB, "library/x", "_t"),
    Good("x:" + "T" * 128, HUB, "library/x", "T" * 128),
    # digests
    Good(f"ubuntu@{D}", HUB, "library/ubuntu", None, D),
    Good(f"ghcr.io/org/repo:1.0@{D}", "ghcr.io", "org/repo", "1.0", D),
    Good(f"localhost:5000/x@{D512}", "localhost:5000", "x", None, D512),
    # wildcards
    Good("gromacs/gromacs:*", HUB, "gromacs/gromacs", "*", public=None),
    Good("python:3.?", HUB, "library/python", "3.?", public=None),
    Good("eicweb/eic_xl:*-stable", HUB, "eicweb/eic_xl", "*-stable", public=None),
    Good("x:?*?", HUB, "library/x", "?*?", public=None),
    # DUCC URL form: the host is always the registry, the scheme is kept
    Good(
        "https://registry.hub.docker.com/library/fedora:latest",
        HUB,
        "library/fedora",
        "latest",
        scheme="https",
        canonical="https://registry.hub.docker.com/library/fedora:latest",
    ),
    Good(
        f"http://host:5000/a/b/c:tag@{D}",
        "host:5000",
        "a/b/c",
        "tag",
        D,
        "http",
        canonical=f"http://host:5000/a/b/c:tag@{D}",
        public="host:5000/a/b/c:tag",
    ),
    Good(
        "https://ghcr.io/watonomous/actions-runner-image:*",
        "ghcr.io",
        "watonomous/actions-runner-image",
        "*",
        scheme="https",
        canonical="https://ghcr.io/watonomous/actions-runner-image:*",
        public=None,
    ),
    Good(
        "https://ghcr.io/x/y:3.?",
        "ghcr.io",
        "x/y",
        "3.?",
        scheme="https",
        canonical="https://ghcr.io/x/y:3.?",
        public=None,
    ),
    Good(
        "HTTPS://Quay.io/x/y",
        "quay.io",
        "x/y",
        "latest",
        scheme="https",
        canonical="https://quay.io/x/y:latest",
    ),
    Good(
        "https://docker.io/ubuntu",
        HUB,
        "library/ubuntu",
        "latest",
        scheme="https",
        canonical=f"https://{HUB}/library/ubuntu:latest",
    ),
    Good(
        "http://myregistry/x",
        "myregistry",
        "x",
        "latest",
        scheme="http",
        canonical="http://myregistry/x:latest",
    ),
    Good(
        f"https://localhost:5000/x@{D}",
        "localhost:5000",
        "x",
        None,
        D,
        "https",
        canonical=f"https://localhost:5000/x@{D}",
    ),
    # commented-out entries of the PSI recipe, and NeuroDesk's generated line format
    Good(
        "https://registry.hub.docker.com/ubuntu:20.04",
        HUB,
        "library/ubuntu",
        "20.04",
        scheme="https",
        canonical=f"https://{HUB}/library/ubuntu:20.04",
    ),
    Good(
        "https://registry.hub.docker.com/library/tensorflow/tensorflow:latest",
        HUB,
        "library/tensorflow/tensorflow",
        "latest",
        scheme="https",
        canonical=f"https://{HUB}/library/tensorflow/tensorflow:latest",
    ),
    Good(
        "https://registry.cern.ch/snapshotter-benchmarks/constant-file-size:*",
        "registry.cern.ch",
        "snapshotter-benchmarks/constant-file-size",
        "*",
        scheme="https",
        canonical="https://registry.cern.ch/snapshotter-benchmarks/constant-file-size:*",
        public=None,
    ),
    Good(
        "https://registry.rc.nectar.org.au/docker/vnmd/fsl_6.0.4:20210105",
        "registry.rc.nectar.org.au",
        "docker/vnmd/fsl_6.0.4",
        "20210105",
        scheme="https",
        canonical="https://registry.rc.nectar.org.au/docker/vnmd/fsl_6.0.4:20210105",
    ),
]


@pytest.mark.parametrize("case", GOOD, ids=[case.text[:60] for case in GOOD])
def test_parse_good(case: Good) -> None:
    ref = parse(case.text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest, ref.scheme) == (
        case.registry,
        case.repository,
        case.tag,
        case.digest,
        case.scheme,
    )
    assert str(ref) == case.expected_str()
    assert ref.name == f"{case.registry}/{case.repository}"
    if case.expected_public() is None:
        assert ref.is_wildcard
        with pytest.raises(InvalidReferenceError, match="wildcard"):
            _ = ref.public_name
    else:
        assert not ref.is_wildcard
        assert ref.public_name == case.expected_public()


@pytest.mark.parametrize("case", GOOD, ids=[case.text[:60] for case in GOOD])
def test_round_trip(case: Good) -> None:
    ref = parse(case.text)
    assert parse(str(ref)) == ref
    assert str(parse(str(ref))) == str(ref)
    assert parse(ref.url_form()) == Reference(
        ref.registry, ref.repository, ref.tag, ref.digest, ref.scheme or "https"
    )


LONG_REPO = "/".join(["a" * 60] * 4)  # 243 characters: with "ghcr.io/" the name has 251

BAD = [
    ("", "empty reference"),
    (" ubuntu", "whitespace"),
    ("ubuntu\n", "whitespace"),
    ("ubuntu:22.04  # LTS", "whitespace"),  # a wish-list line with a trailing comment
    ("ubuntu:22.04#LTS", "'#' is not allowed"),
    ("ubu\x00ntu", "control characters"),
    ("x" * 2000, "too long"),
    # scheme and URL parts
    ("docker://ubuntu", "unsupported scheme 'docker'"),
    ("ftp://host/x", "unsupported scheme 'ftp'"),
    ("://host/x", "unsupported scheme ''"),
    ("https://host", "no repository path"),
    ("https://host/", "no repository path"),
    ("https:///x", "no registry host"),
    ("https://host/x?tag=1", "URL query"),
    ("https://user:secret@host/x", "user information"),
    ("user:secret@host.example/x", "user information"),
    ("https://host/x#frag", "'#' is not allowed"),
    # registry
    ("host:0/x", "bad registry port '0'"),
    ("host:65536/x", "bad registry port '65536'"),
    ("host:05000/x", "leading zeros"),
    ("host:/x", "empty registry port"),
    ("host:50:00/x", "bad registry port '50:00'"),
    ("x:ta/g", "bad registry port 'ta'"),  # as in docker, "x:ta" is a registry
    (":5000/x", "empty registry host"),
    ("ex_ample.com/x", "bad registry host 'ex_ample.com'"),
    ("-bad.example/x", "bad registry host"),
    ("bad-.example/x", "bad registry host"),
    ("a..b/x", "bad registry host"),
    ("example.com./x", "bad registry host"),
    (f"{'a' * 64}.example/x", "bad registry host"),  # a DNS label is at most 63 characters
    ("[::1/x", "'[' without ']'"),
    ("[::g]:5000/x", "bad IPv6 address '::g'"),
    ("[127.0.0.1]/x", "bad IPv6 address"),
    ("[fe80::1%eth0]/x", "IPv6 zone"),
    ("[::1]x/y", "unexpected 'x'"),
    # repository
    ("Ubuntu", "repository must be lowercase"),
    ("ghcr.io/Org/repo", "repository must be lowercase"),
    ("User/repo", "repository must be lowercase"),  # docker would take "User" for a registry
    ("https://ghcr.io/org/Repo:1", "repository must be lowercase"),
    ("a//b", "empty path component"),
    ("x/", "empty path component"),
    ("/x", "empty path component"),
    ("ghcr.io/", "empty repository"),
    ("a...b", "bad repository path component 'a...b'"),
    ("a___b", "bad repository path component 'a___b'"),
    ("a-/b", "bad repository path component 'a-'"),
    ("_a", "bad repository path component '_a'"),
    ("pyth?n:3", "bad repository path component 'pyth?n'"),
    ("gh*cr/x", "bad repository path component 'gh*cr'"),
    ("ubüntu", "bad repository path component"),
    (f"ghcr.io/{LONG_REPO}/abcde", "longer than 255"),
    # tag
    ("x:", "empty tag"),
    ("x:-tag", "must start with"),
    ("x:.tag", "must start with"),
    ("x:t+g", "character '+'"),
    ("x:t[1]", "character '['"),
    ("x:täg", "character 'ä'"),
    ("x:" + "a" * 129, "longer than 128"),
    # digest
    ("x@", "empty digest"),
    ("x@sha256:abc", "expected 64"),
    ("x@sha256:" + "A" * 64, "lowercase hex"),
    ("x@sha512:" + "a" * 64, "expected 128"),
    ("x@md5:" + "a" * 32, "unsupported digest algorithm 'md5'"),
    ("x@latest", "malformed digest"),
    (f"x@{D}@{D}", "bad digest"),
    (f"x:*@{D}", "wildcard tag '*' cannot be pinned"),
]


@pytest.mark.parametrize(("text", "reason"), BAD, ids=[repr(text)[:60] for text, _ in BAD])
def test_parse_bad(text: str, reason: str) -> None:
    with pytest.raises(InvalidReferenceError) as caught:
        parse(text)
    assert reason in caught.value.reason
    assert isinstance(caught.value, UnpackedError)
    assert caught.value.reason in str(caught.value)


def test_error_names_the_reference() -> None:
    with pytest.raises(InvalidReferenceError) as caught:
        parse("ghcr.io/Org/repo")
    assert caught.value.text == "ghcr.io/Org/repo"
    assert "'ghcr.io/Org/repo'" in str(caught.value)


@pytest.mark.parametrize(
    "text", ["https://user:secret@host/x", "http://me:secret@h.example:5000/a:b", "u:secret@h.x/y"]
)
def test_error_does_not_echo_credentials(text: str) -> None:
    with pytest.raises(InvalidReferenceError) as caught:
        parse(text)
    assert "secret" not in str(caught.value)
    assert "***@" in caught.value.text


# --- direct construction, derived values, new references ---------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (("docker.io", "library/x"), "not canonical: write 'registry.hub.docker.com'"),
        (("GHCR.io", "x"), "not canonical: write 'ghcr.io'"),
        (("[0::1]", "x"), "not canonical: write '[::1]'"),
        ((HUB, "ubuntu"), "needs a namespace"),
        (("myhost", "x"), "needs a scheme"),  # would print as a Docker Hub namespace
        (("ghcr.io", "X"), "lowercase"),
        (("ghcr.io", "x", None, None), "neither tag nor digest"),
        (("ghcr.io", "x", "bad tag"), "character ' '"),
        (("ghcr.io", "x", "latest", "sha256:0"), "bad digest"),
        (("ghcr.io", "x", "latest", None, "ftp"), "unsupported scheme"),
        (("ghcr.io", "x", "v*", D), "cannot be pinned"),
    ],
)
def test_construction_validates(fields: tuple[str, ...], reason: str) -> None:
    with pytest.raises(InvalidReferenceError) as caught:
        Reference(*fields)
    assert reason in caught.value.reason


def test_construction_of_canonical_values() -> None:
    assert Reference("myhost", "x", scheme="http") == parse("http://myhost/x")
    assert Reference("ghcr.io", "x") == parse("ghcr.io/x:latest")
    assert Reference(HUB, "library/ubuntu").tag == DEFAULT_TAG


@pytest.mark.parametrize(
    ("text", "api_host"),
    [
        ("ubuntu", DOCKER_HUB_API),
        ("https://registry.hub.docker.com/library/fedora", DOCKER_HUB_API),
        ("index.docker.io/x/y", DOCKER_HUB_API),
        ("ghcr.io/x", "ghcr.io"),
        ("localhost:5000/x", "localhost:5000"),
        ("[::1]:5000/x", "[::1]:5000"),
        ("docker.io:443/x", "docker.io:443"),
    ],
)
def test_api_host(text: str, api_host: str) -> None:
    assert parse(text).api_host == api_host


def test_with_tag_and_with_digest() -> None:
    ref = parse("https://ghcr.io/org/app:*")
    concrete = ref.with_tag("1.2")
    assert concrete == parse("https://ghcr.io/org/app:1.2")
    assert not concrete.is_wildcard
    assert ref.tag == "*"  # the original is untouched

    pinned = concrete.with_digest(Digest.parse(D))
    assert (pinned.tag, pinned.digest) == ("1.2", D)
    assert pinned.public_name == "ghcr.io/org/app:1.2"
    assert pinned.with_tag("1.3").digest == D
    assert parse(f"ghcr.io/x@{D}").with_digest(D512).digest == D512
    assert parse(f"ghcr.io/x@{D}").with_tag("v").public_name == "ghcr.io/x:v"


@pytest.mark.parametrize(
    ("call", "reason"),
    [
        (lambda: parse("x").with_tag("v/../../etc"), "character '/'"),
        (lambda: parse("x").with_tag("../etc"), "must start with"),
        (lambda: parse("x").with_tag(""), "empty tag"),
        (lambda: parse("x:*").with_digest(D), "cannot be pinned"),
        (lambda: parse("x").with_digest("sha256:xyz"), "bad digest"),
    ],
)
def test_with_rejects_invalid(call: Callable[[], object], reason: str) -> None:
    with pytest.raises(InvalidReferenceError) as caught:
        call()
    assert reason in caught.value.reason


# --- wildcards ---------------------------------------------------------------------------

MATCHES = [
    # (pattern, tag, matches?)
    ("*", "latest", True),
    ("*", "1.0", True),
    ("latest", "latest", True),
    ("latest", "latest2", False),
    ("3.*", "3.11", True),
    ("3.*", "3.", True),  # '*' also matches an empty run
    ("3.*", "3", False),
    ("3.*", "13.1", False),  # whole-tag match: no implicit prefix
    ("3.?", "3.8", True),
    ("3.?", "3.10", False),
    ("3.?", "3.", False),  # '?' is exactly one character
    ("3.?", "3x8", False),  # '.' is literal, not "any character"
    ("?", "a", True),
    ("??", "a", False),
    ("*-stable", "25.11.2-stable", True),
    ("*-stable", "25.11.2-stable-rc", False),
    ("osg*", "osg", True),
    ("osg*", "osg-3.6", True),
    ("osg*", "xosg", False),
    ("v*.*", "v1.2", True),
    ("v*.*", "v12", False),
    ("*a*a*a*a*a*a*a*a*b", "a" * 120, False),  # must not backtrack exponentially
    ("*a*a*a*a*a*a*a*a*b", "a" * 120 + "b", True),
    # regex syntax in a pattern is literal
    ("1+", "11", False),
    ("1+", "1", False),
    ("[0-9]", "5", False),
    ("a{2}", "aa", False),
    ("a|b", "a", False),
    ("^v.*$", "v1", False),
    ("v\\d", "v1", False),
    # tags that are not valid concrete tags never match, whatever the pattern
    ("*", "../x", False),
    ("*", "a/b", False),
    ("*", "", False),
    ("*", ".hidden", False),
    ("*", "-x", False),
    ("*", "a" * 129, False),
    ("*", "tag with space", False),
    ("*", "v*", False),
]


@pytest.mark.parametrize(("pattern", "tag", "expected"), MATCHES)
def test_tag_matches(pattern: str, tag: str, expected: bool) -> None:
    assert tag_matches(pattern, tag) is expected


def test_reference_matches_tag() -> None:
    assert parse("python:3.?").matches_tag("3.9")
    assert not parse("python:3.?").matches_tag("3.10")
    assert parse("python:3.9").matches_tag("3.9")
    assert not parse("python:3.9").matches_tag("3.8")
    assert not parse(f"python@{D}").matches_tag("latest")


def _regex_glob(pattern: str, tag: str) -> bool:
    """An independent oracle: translate to a regex, escaping everything but * and ?."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, tag, re.DOTALL) is not None


@given(st.text("ab.-*?", max_size=8), st.text("ab.-", min_size=1, max_size=10))
def test_tag_matches_agrees_with_regex_oracle(pattern: str, tag: str) -> None:
    assume(tag[0] not in ".-")
    assert tag_matches(pattern, tag) is _regex_glob(pattern, tag)


# --- properties over generated references -------------------------------------------------

_component = st.from_regex(r"[a-z0-9]{1,4}(?:(?:[._]|__|-{1,2})[a-z0-9]{1,4}){0,2}", fullmatch=True)
_label = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
_port = st.integers(1, 65535).map(str)


@st.composite
def _hostnames(draw: st.DrawFn) -> tuple[str, str]:
    """(spelling, canonical) of a registry that docker syntax recognises as one."""
    kind = draw(st.sampled_from(["dns", "localhost", "ipv4", "ipv6"]))
    if kind == "dns":
        host = ".".join(draw(st.lists(_label, min_size=2, max_size=3)))
    elif kind == "localhost":
        host = "localhost"
    elif kind == "ipv4":
        host = str(draw(st.ip_addresses(v=4)))
    else:
        host = f"[{draw(st.ip_addresses(v=6)).compressed}]"
    port = draw(st.none() | _port)
    canonical = host if port is None else f"{host}:{port}"
    spelling = canonical.upper() if draw(st.booleans()) and kind == "dns" else canonical
    return spelling, canonical


_HUB_SPELLINGS = [None, "docker.io", "index.docker.io", "registry-1.docker.io", DOCKER_HUB]


@st.composite
def _references(draw: st.DrawFn) -> tuple[str, Reference]:
    """A reference text in any accepted form, and the Reference it must parse to."""
    on_hub = draw(st.booleans())
    if on_hub:
        spelling = draw(st.sampled_from(_HUB_SPELLINGS))
        registry = DOCKER_HUB
    else:
        spelling, registry = draw(_hostnames())
    components = draw(st.lists(_component, min_size=1, max_size=4))
    repository = "/".join(components)
    if spelling is None and len(components) > 1:
        # unqualified, the first component must not look like a registry
        assume("." not in components[0] and components[0] != "localhost")
    wildcard = st.from_regex(r"[a-z0-9_*?][a-z0-9_.*?-]{0,10}", fullmatch=True)
    concrete = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,12}", fullmatch=True)
    tag = draw(st.none() | concrete | wildcard)
    digest = None
    if tag is None or not set("*?") & set(tag):
        digest = draw(st.none() | st.text("0123456789abcdef", min_size=64, max_size=64))
        digest = digest and f"sha256:{digest}"
    scheme = draw(st.sampled_from([None, "http", "https"]))
    if scheme and spelling is None:
        spelling = DOCKER_HUB
    text = (f"{scheme}://" if scheme else "") + (f"{spelling}/" if spelling else "")
    text += repository + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    if registry == DOCKER_HUB and len(components) == 1:
        repository = f"library/{repository}"
    assume(len(registry) + 1 + len(repository) <= 255)
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return text, Reference(registry, repository, tag, digest, scheme)


@settings(max_examples=200)
@given(_references())
def test_generated_references_parse_and_round_trip(case: tuple[str, Reference]) -> None:
    text, expected = case
    ref = parse(text)
    assert ref == expected
    assert parse(str(ref)) == ref
    assert str(parse(str(ref))) == str(ref)
    assert parse(ref.url_form()).scheme == (ref.scheme or "https")
    if not ref.is_wildcard:
        assert ref.public_name.startswith(f"{ref.registry}/{ref.repository}")


_reference_alphabet = "abcAB019.-_:/@*?[]%#" + " \t"


@settings(max_examples=300)
@given(st.text(_reference_alphabet, max_size=40) | st.text(max_size=20))
def test_any_text_parses_canonically_or_raises_invalid_reference(text: str) -> None:
    try:
        ref = parse(text)
    except InvalidReferenceError as exc:
        assert exc.reason
        return
    assert parse(str(ref)) == ref
    assert str(parse(str(ref))) == str(ref)


_field = st.text(_reference_alphabet, max_size=12)


@settings(max_examples=300)
@given(
    st.sampled_from(["ghcr.io", DOCKER_HUB, "docker.io", "[::1]:5000", "myhost"]) | _field,
    st.sampled_from(["x", "library/x", "a/b"]) | _field,
    st.none() | st.sampled_from(["latest", "v*"]) | _field,
    st.none() | st.just(D) | _field,
    st.sampled_from([None, "http", "https"]) | _field,
)
def test_construction_is_valid_or_raises_invalid_reference(
    registry: str, repository: str, tag: str | None, digest: str | None, scheme: str | None
) -> None:
    try:
        ref = Reference(registry, repository, tag, digest, scheme)
    except InvalidReferenceError as exc:
        assert exc.reason
        return
    assert parse(str(ref)) == ref


# --- the real wish lists -------------------------------------------------------------------


def _recipes_dir() -> Path:
    candidates = [Path(__file__).resolve().parents[2] / "shared" / "real-recipes"]
    if shared := os.environ.get("UNPACKED_SHARED_DIR"):
        candidates.append(Path(shared) / "real-recipes")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    pytest.fail(f"real recipes not found in any of {[str(c) for c in candidates]}")


def _yaml_inputs(name: str) -> list[str]:
    document = yaml.safe_load((_recipes_dir() / name).read_text(encoding="utf-8"))
    inputs = document["input"] or []  # the NeuroDesk template has an empty `input:`
    assert all(isinstance(entry, str) for entry in inputs)
    return inputs


def _parse_all(entries: list[str]) -> list[Reference]:
    refs, failures = [], []
    for entry in entries:
        try:
            refs.append(parse(entry))
        except InvalidReferenceError as exc:
            failures.append(str(exc))
    assert not failures, "\n".join(failures)
    return refs


@pytest.mark.parametrize(
    ("name", "count", "distinct", "registries", "wildcards"),
    [
        (
            "github-cvmfs-images-unpacked.cern.ch-recipe.yaml",
            47,
            46,  # stimela/pybdsf:1.6.6 is listed twice
            {HUB: 23, "gitlab-p4n.aip.de:5005": 12, "quay.io": 9, "ghcr.io": 2, "nvcr.io": 1},
            1,
        ),
        ("psi-cvmfs-contrib-cvmfs-unpack-api-recipe.yaml", 1, 1, {HUB: 1}, 0),
        ("neurodesk-recipe_neurodesk_template.yaml", 0, 0, {}, 0),
    ],
)
def test_real_yaml_recipes(
    name: str, count: int, distinct: int, registries: dict[str, int], wildcards: int
) -> None:
    refs = _parse_all(_yaml_inputs(name))
    assert len(refs) == count
    assert len(set(refs)) == distinct
    assert Counter(ref.registry for ref in refs) == registries
    assert sum(ref.is_wildcard for ref in refs) == wildcards
    assert all(ref.scheme == "https" for ref in refs)  # DUCC recipes use the URL form
    for ref in refs:
        assert parse(str(ref)) == ref


def _osg_lines() -> list[tuple[int, str]]:
    text = (_recipes_dir() / "osg-cvmfs-singularity-sync-docker_images.txt").read_text("utf-8")
    return [
        (number, line)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def test_real_osg_list_lines_are_bare_references() -> None:
    # A reference never contains whitespace or '#': stripping and cutting comments is the
    # wish-list reader's job (BAD covers what parse says about such lines). This copy has
    # neither, so every entry line must be taken as it is.
    for number, line in _osg_lines():
        assert line == line.strip(), f"line {number}: surrounding whitespace in {line!r}"
        assert "#" not in line, f"line {number}: trailing comment in {line!r}"


def test_real_osg_list() -> None:
    lines = [line for _, line in _osg_lines()]
    refs = _parse_all(lines)
    assert len(refs) == 562
    assert len(set(refs)) == 562
    assert Counter(ref.registry for ref in refs) == {
        HUB: 432,
        "containers.ligo.org": 58,
        "ghcr.io": 51,
        "hub.opensciencegrid.org": 20,
        "docker.opencarp.org": 1,
    }
    assert sum(ref.is_wildcard for ref in refs) == 113
    assert sum(ref.digest is not None for ref in refs) == 0
    untagged = [
        ref for line, ref in zip(lines, refs, strict=True) if ":" not in line.rsplit("/", 1)[-1]
    ]
    assert len(untagged) == 65
    assert all(ref.tag == DEFAULT_TAG for ref in untagged)
    assert all(ref.scheme is None for ref in refs)
    for ref in refs:
        assert parse(str(ref)) == ref


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("debian:latest", (HUB, "library/debian", "latest")),
        ("continuumio/anaconda", (HUB, "continuumio/anaconda", "latest")),
        (
            "opensciencegrid/osgvo-ubuntu-18.04",
            (HUB, "opensciencegrid/osgvo-ubuntu-18.04", "latest"),
        ),
        ("cailmdaley/sptlab:osg*", (HUB, "cailmdaley/sptlab", "osg*")),
        ("eicweb/eic_xl:*-stable", (HUB, "eicweb/eic_xl", "*-stable")),
        ("argonneeic/evochain:v*", (HUB, "argonneeic/evochain", "v*")),
        ("ghcr.io/star-bnl/star-sw", ("ghcr.io", "star-bnl/star-sw", "latest")),
        (
            "hub.opensciencegrid.org/htc/rocky:9-cuda-12.6.0",
            ("hub.opensciencegrid.org", "htc/rocky", "9-cuda-12.6.0"),
        ),
        (
            "containers.ligo.org/alan.knee/lal-images/lalsuite-fstatbinary:latest",
            ("containers.ligo.org", "alan.knee/lal-images/lalsuite-fstatbinary", "latest"),
        ),
        (
            "containers.ligo.org/karl-wette/lalsuite-containers:"
            "7.26.2.15fff1bf87f1bf6b283aadeb6f5a21df39350e4f.cuda-build1",
            (
                "containers.ligo.org",
                "karl-wette/lalsuite-containers",
                "7.26.2.15fff1bf87f1bf6b283aadeb6f5a21df39350e4f.cuda-build1",
            ),
        ),
        (
            "egoodman/t2knova_mach3_configdata:PostBANFF",
            (HUB, "egoodman/t2knova_mach3_configdata", "PostBANFF"),
        ),
    ],
)
def test_real_osg_entries(line: str, expected: tuple[str, str, str]) -> None:
    assert line in {entry for _, entry in _osg_lines()}
    ref = parse(line)
    assert (ref.registry, ref.repository, ref.tag) == expected
