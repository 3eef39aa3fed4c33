"""Image references: parse every form users write, print one canonical form. No I/O.

Accepted forms:

- DUCC URL form: ``https://registry.hub.docker.com/library/fedora:latest``,
  ``http://host:5000/a/b/c:tag@sha256:<hex>``. The host is always the registry and the
  scheme is kept, so the reference prints back the way it was written.
- docker forms: ``ubuntu``, ``user/repo:tag``, ``ghcr.io/org/repo@sha256:<hex>``,
  ``localhost:5000/x``, ``[::1]:5000/x``. As in docker, the first path component is a
  registry when it contains ``.`` or ``:``, or is ``localhost``. (Docker also takes a
  first component with upper case for a registry; we do not, so ``User/repo`` is reported
  as a repository that must be lower case instead of silently naming a registry "user".)

Normalisation, so that one image always gets one public path: every spelling of Docker
Hub becomes ``registry.hub.docker.com`` and its one-component repositories get
``library/``; registry host names are lower-cased (DNS is case-insensitive) and IPv6
addresses compressed; a reference with neither tag nor digest gets the tag ``latest``.

A tag may be a wildcard pattern (``*`` any run, ``?`` one character); see
:func:`tag_matches`. Every ``Reference`` is valid and canonical, whether it came from
:func:`parse` or was built directly, so ``parse(str(ref)) == ref`` always holds.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from dataclasses import dataclass

from unpacked.digest import Digest
from unpacked.errors import InvalidReferenceError

__all__ = ["DEFAULT_TAG", "DOCKER_HUB", "DOCKER_HUB_API", "Reference", "parse", "tag_matches"]

DOCKER_HUB = "registry.hub.docker.com"
"""The registry name Docker Hub images get in public paths (users' scripts depend on it)."""

DOCKER_HUB_API = "registry-1.docker.io"
"""The host that actually serves Docker Hub's distribution API."""

DEFAULT_TAG = "latest"
"""The tag of a reference written with neither tag nor digest."""

_DOCKER_HUB_SPELLINGS = frozenset({"docker.io", "index.docker.io", DOCKER_HUB_API, DOCKER_HUB})
_SCHEMES = ("http", "https")
_NAME_MAX = 255  # docker's NameTotalLengthMax, applied to "registry/repository"
_TAG_MAX = 128
_TEXT_MAX = 1024  # far above the longest valid reference; bounds the work on hostile input
_LABEL_MAX = 63
_PORT_MAX = 65535

# docker/distribution: path-component := alpha-numeric (separator alpha-numeric)*,
# separator := [._] | __ | -+
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
# One DNS label: letters and digits, hyphens only inside. Matched after lower-casing.
_HOST_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
# docker's tag := [\w][\w.-]{0,127}, spelled out because Python's \w also matches non-ASCII.
_TAG_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
_TAG_FIRST_CHARS = _TAG_CHARS - {".", "-"}
_WILDCARDS = frozenset("*?")
_PORT = re.compile(r"[1-9][0-9]{0,4}")  # no leading zeros: one port, one public path


class _Rejected(Exception):
    """Why a part of a reference is invalid; turned into InvalidReferenceError by callers."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Reference:
    """A parsed image reference; construction validates and insists on canonical form.

    registry:   normalised registry name as used in public paths, with port if any
                ("registry.hub.docker.com", "ghcr.io", "localhost:5000", "[::1]:5000")
    repository: path inside the registry ("library/ubuntu", "org/team/app")
    tag:        tag, possibly a wildcard pattern ("3.*"); None for digest-only references
    digest:     "sha256:<hex>" or None
    scheme:     "http" or "https" when the reference said so (DUCC URL form), else None
    """

    registry: str
    repository: str
    tag: str | None = DEFAULT_TAG
    digest: str | None = None
    scheme: str | None = None

    def __post_init__(self) -> None:
        try:
            _check_fields(self.registry, self.repository, self.tag, self.digest, self.scheme)
        except _Rejected as exc:
            raise InvalidReferenceError(str(self), exc.reason) from None

    def __str__(self) -> str:
        """``registry/repository[:tag][@digest]``, prefixed by ``scheme://`` if one was given."""
        prefix = f"{self.scheme}://" if self.scheme else ""
        return prefix + self._unschemed()

    @property
    def name(self) -> str:
        """``registry/repository``."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The ``host[:port]`` that serves the distribution API for this registry."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def is_wildcard(self) -> bool:
        """True when the tag is a pattern (contains ``*`` or ``?``)."""
        return self.tag is not None and not _WILDCARDS.isdisjoint(self.tag)

    @property
    def public_name(self) -> str:
        """The image's relative path in the repository layout.

        ``<registry>/<repository>:<tag>``, or ``<registry>/<repository>@<digest>`` when
        pinned only by digest. A wildcard reference names no single image: expand it first.
        """
        if self.is_wildcard:
            raise InvalidReferenceError(
                str(self), "a wildcard reference has no public name; expand its tag first"
            )
        if self.tag is not None:
            return f"{self.name}:{self.tag}"
        return f"{self.name}@{self.digest}"

    def url_form(self) -> str:
        """The DUCC URL form, ``https://registry/repository:tag`` (the scheme given, if any)."""
        return f"{self.scheme or 'https'}://{self._unschemed()}"

    def with_tag(self, tag: str) -> Reference:
        """This reference with another tag (the digest, if any, is kept)."""
        return dataclasses.replace(self, tag=tag)

    def with_digest(self, digest: str | Digest) -> Reference:
        """This reference pinned to ``digest`` (the tag, if any, is kept)."""
        return dataclasses.replace(self, digest=str(digest))

    def matches_tag(self, tag: str) -> bool:
        """Whether the concrete ``tag`` is selected by this reference's tag (pattern)."""
        return self.tag is not None and tag_matches(self.tag, tag)

    def _unschemed(self) -> str:
        tag = f":{self.tag}" if self.tag is not None else ""
        digest = f"@{self.digest}" if self.digest is not None else ""
        return f"{self.name}{tag}{digest}"


def parse(text: str) -> Reference:
    """Parse an image reference in any accepted form; raise ``InvalidReferenceError``."""
    try:
        registry, repository, tag, digest, scheme = _parse_fields(text)
        _check_fields(registry, repository, tag, digest, scheme)
    except _Rejected as exc:
        raise InvalidReferenceError(_redacted(text), exc.reason) from None
    return Reference(registry, repository, tag, digest, scheme)


def tag_matches(pattern: str, tag: str) -> bool:
    """Whether ``tag`` matches the wildcard ``pattern`` as a whole.

    ``*`` matches any run of characters (also none), ``?`` exactly one; every other
    character, ``.`` ``+`` ``[`` included, matches only itself. A ``tag`` that is not a
    valid concrete tag never matches, so a registry's tag list cannot smuggle a path
    (``../x``) into the layout through a wildcard.
    """
    if not _is_concrete_tag(tag):
        return False
    return _glob_match(pattern, tag)


def _glob_match(pattern: str, text: str) -> bool:
    # Greedy matching that backtracks only to the most recent '*': O(len(pattern) * len(text)),
    # where a translated regex can take exponential time on patterns like "*a*a*a*b".
    p = t = 0
    star_p, star_t = -1, 0
    while t < len(text):
        if p < len(pattern) and pattern[p] in ("?", text[t]):
            p, t = p + 1, t + 1
        elif p < len(pattern) and pattern[p] == "*":
            star_p, star_t = p, t
            p += 1
        elif star_p >= 0:
            star_t += 1
            p, t = star_p + 1, star_t
        else:
            return False
    return all(char == "*" for char in pattern[p:])


# --- parsing: text -> fields -------------------------------------------------------------

_Fields = tuple[str, str, str | None, str | None, str | None]


def _parse_fields(text: str) -> _Fields:
    _check_text(text)
    scheme, rest = _split_scheme(text)
    spelling, path = _split_url_host(rest) if scheme else _split_docker_host(rest)
    repository, tag, digest = _split_path(path)
    if scheme and "?" in repository:
        raise _Rejected("a URL query ('?...') is not allowed; '?' is only a tag wildcard")
    registry = DOCKER_HUB if spelling is None else _canonical_registry(spelling)
    _check_repository(repository)
    if registry == DOCKER_HUB and "/" not in repository:
        repository = f"library/{repository}"
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return registry, repository, tag, digest, scheme


def _check_text(text: str) -> None:
    if not text:
        raise _Rejected("empty reference")
    if len(text) > _TEXT_MAX:
        raise _Rejected(f"too long ({len(text)} characters)")
    if any(char.isspace() or not char.isprintable() for char in text):
        raise _Rejected("contains whitespace or control characters")
    if "#" in text:
        raise _Rejected("'#' is not allowed (a URL fragment, or a comment on the same line?)")


def _split_scheme(text: str) -> tuple[str | None, str]:
    scheme, separator, rest = text.partition("://")
    if not separator:
        return None, text
    scheme = scheme.lower()
    if scheme not in _SCHEMES:
        raise _Rejected(f"unsupported scheme {scheme!r}: only http:// and https://")
    return scheme, rest


def _split_url_host(rest: str) -> tuple[str, str]:
    host, _, path = rest.partition("/")
    if not host:
        raise _Rejected("URL has no registry host")
    if not path:
        raise _Rejected("URL has no repository path")
    return host, path


def _split_docker_host(rest: str) -> tuple[str | None, str]:
    first, separator, path = rest.partition("/")
    if separator and (
        "." in first or ":" in first or first.startswith("[") or first.lower() == "localhost"
    ):
        return first, path
    return None, rest


def _split_path(path: str) -> tuple[str, str | None, str | None]:
    """``repository[:tag][@digest]`` -> parts; empty parts after a separator are errors."""
    name, at, digest = path.partition("@")
    if at and not digest:
        raise _Rejected("empty digest after '@'")
    colon = name.rfind(":")
    if colon <= name.rfind("/"):
        return name, None, digest or None
    if colon == len(name) - 1:
        raise _Rejected("empty tag after ':'")
    return name[:colon], name[colon + 1 :], digest or None


def _canonical_registry(spelling: str) -> str:
    if "@" in spelling:
        raise _Rejected("user information ('user@') is not allowed in the registry")
    host, port = _split_port(spelling)
    host = _canonical_host(host)
    registry = host if port is None else f"{host}:{_checked_port(port)}"
    return DOCKER_HUB if registry in _DOCKER_HUB_SPELLINGS else registry


def _split_port(spelling: str) -> tuple[str, str | None]:
    if spelling.startswith("["):
        end = spelling.find("]")
        if end < 0:
            raise _Rejected(f"registry {spelling!r}: '[' without ']'")
        host, after = spelling[: end + 1], spelling[end + 1 :]
        if after and not after.startswith(":"):
            raise _Rejected(f"registry {spelling!r}: unexpected {after!r} after the address")
        return host, after[1:] if after else None
    host, colon, port = spelling.partition(":")
    return host, port if colon else None


def _canonical_host(host: str) -> str:
    if not host:
        raise _Rejected("empty registry host")
    if host.startswith("["):
        return _canonical_ipv6(host[1:-1])
    lowered = host.lower()
    for label in lowered.split("."):
        if len(label) > _LABEL_MAX or not _HOST_LABEL.fullmatch(label):
            raise _Rejected(
                f"bad registry host {host!r}: labels are letters, digits and inner '-', "
                "separated by '.'"
            )
    return lowered


def _canonical_ipv6(address: str) -> str:
    if "%" in address:
        raise _Rejected(f"IPv6 zone in registry address {address!r} is not allowed")
    try:
        return f"[{ipaddress.IPv6Address(address).compressed}]"
    except ValueError:
        raise _Rejected(f"bad IPv6 address {address!r} in registry") from None


def _checked_port(port: str) -> str:
    if not port:
        raise _Rejected("empty registry port after ':'")
    if not _PORT.fullmatch(port) or int(port) > _PORT_MAX:
        raise _Rejected(f"bad registry port {port!r}: a number 1..65535 without leading zeros")
    return port


def _redacted(text: str) -> str:
    """``text`` with any ``user:password@`` before the first '/' masked, for messages."""
    scheme, separator, rest = text.rpartition("://")
    host, slash, path = rest.partition("/")
    if not slash or "@" not in host:
        return text
    return f"{scheme}{separator}***@{host.rpartition('@')[2]}/{path}"


# --- validation of fields (shared by parse and direct construction) ----------------------


def _check_fields(
    registry: str, repository: str, tag: str | None, digest: str | None, scheme: str | None
) -> None:
    if scheme is not None and scheme not in _SCHEMES:
        raise _Rejected(f"unsupported scheme {scheme!r}: only 'http' and 'https'")
    _check_registry(registry, scheme)
    _check_repository(repository)
    if registry == DOCKER_HUB and "/" not in repository:
        raise _Rejected(f"Docker Hub repository {repository!r} needs a namespace ('library/')")
    if len(registry) + 1 + len(repository) > _NAME_MAX:
        raise _Rejected(f"name 'registry/repository' longer than {_NAME_MAX} characters")
    _check_version(tag, digest)


def _check_registry(registry: str, scheme: str | None) -> None:
    canonical = _canonical_registry(registry)
    if canonical != registry:
        raise _Rejected(f"registry {registry!r} is not canonical: write {canonical!r}")
    first = registry.split(":", 1)[0]
    if scheme is None and "." not in first and first != "localhost" and ":" not in registry:
        # Printed without a scheme, "host/repo" would read back as a Docker Hub namespace.
        raise _Rejected(f"registry {registry!r} needs a scheme, a '.', a port or 'localhost'")


def _check_repository(repository: str) -> None:
    if not repository:
        raise _Rejected("empty repository")
    if repository != repository.lower():
        raise _Rejected(f"repository must be lowercase: {repository!r}")
    for component in repository.split("/"):
        if not component:
            raise _Rejected(f"empty path component in repository {repository!r}")
        if not _PATH_COMPONENT.fullmatch(component):
            raise _Rejected(
                f"bad repository path component {component!r}: lowercase letters and digits "
                "separated by '.', '_', '__' or '-'"
            )


def _check_version(tag: str | None, digest: str | None) -> None:
    if tag is None and digest is None:
        raise _Rejected("neither tag nor digest")
    if tag is not None:
        _check_tag(tag)
    if digest is not None:
        _check_digest(digest)
        if tag is not None and not _WILDCARDS.isdisjoint(tag):
            raise _Rejected(f"a wildcard tag {tag!r} cannot be pinned to a digest")


def _check_tag(tag: str) -> None:
    if not tag:
        raise _Rejected("empty tag")
    if len(tag) > _TAG_MAX:
        raise _Rejected(f"tag longer than {_TAG_MAX} characters")
    if tag[0] not in _TAG_FIRST_CHARS | _WILDCARDS:
        raise _Rejected(f"bad tag {tag!r}: must start with a letter, digit, '_' or wildcard")
    for char in tag:
        if char not in _TAG_CHARS | _WILDCARDS:
            raise _Rejected(
                f"bad tag {tag!r}: character {char!r} not allowed "
                "(letters, digits, '_', '.', '-', wildcards '*' and '?')"
            )


def _is_concrete_tag(tag: str) -> bool:
    return (
        0 < len(tag) <= _TAG_MAX
        and tag[0] in _TAG_FIRST_CHARS
        and all(char in _TAG_CHARS for char in tag)
    )


def _check_digest(digest: str) -> None:
    try:
        parsed = Digest.parse(digest)
    except ValueError as exc:
        raise _Rejected(f"bad digest: {exc}") from None
    if str(parsed) != digest:
        raise _Rejected(f"bad digest {digest!r}: not in canonical form")
