"""Registry credentials from a docker ``config.json`` / containers ``auth.json``.

The file is found the way podman and docker look for it: ``$REGISTRY_AUTH_FILE``,
``$DOCKER_CONFIG/config.json``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
``~/.docker/config.json`` (the first that exists). Entries under ``auths`` are
keyed by host (``ghcr.io``), by URL (``https://ghcr.io``, Docker Hub's
``https://index.docker.io/v1/``) or, as containers allow, by host and namespace
(``quay.io/org``; the longest matching prefix wins). Credential helpers
(``credsStore``, ``credHelpers``) run programs; we do not, and say so once.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from unpacked.errors import ConfigError
from unpacked.reference import DOCKER_HUB

logger = logging.getLogger(__name__)

_warned_lock = threading.Lock()
_warned: set[tuple[str, str]] = set()

_DOCKER_HUB_ALIASES = frozenset(
    {DOCKER_HUB, "docker.io", "index.docker.io", "registry-1.docker.io"}
)


@dataclass(frozen=True)
class Credentials:
    """A user name and password (or token used as one); ``source`` names the file."""

    username: str
    password: str = field(repr=False)
    source: str = ""


@dataclass(frozen=True)
class CredentialStore:
    """The ``auths`` of one auth file, keyed by normalised host[/namespace]."""

    entries: Mapping[str, Credentials] = field(default_factory=dict)
    path: Path | None = None

    def lookup(self, registry: str, repository: str = "") -> Credentials | None:
        """Credentials for ``registry`` (and ``repository``): the most specific entry."""
        host = _normal_host(registry)
        parts = [p for p in repository.split("/") if p]
        for length in range(len(parts), -1, -1):
            key = "/".join([host, *parts[:length]])
            found = self.entries.get(key)
            if found is not None:
                return found
        return None


def discover_auth_file(environ: Mapping[str, str] | None = None) -> Path | None:
    """The first existing auth file in the usual places, or None."""
    env = os.environ if environ is None else environ
    explicit = env.get("REGISTRY_AUTH_FILE")
    if explicit:
        if _is_file(Path(explicit)):
            return Path(explicit)
        logger.warning("REGISTRY_AUTH_FILE=%s does not exist; looking elsewhere", explicit)
    candidates = []
    if env.get("DOCKER_CONFIG"):
        candidates.append(Path(env["DOCKER_CONFIG"]) / "config.json")
    if env.get("XDG_RUNTIME_DIR"):
        candidates.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    home = env.get("HOME")
    if home:
        candidates.append(Path(home) / ".docker" / "config.json")
    return next((p for p in candidates if _is_file(p)), None)


def _is_file(path: Path) -> bool:
    # A place we may not even look into (HOME=/root kept by su, a name too long) is
    # skipped with a word, as a missing file is, rather than ending in a traceback.
    try:
        return path.is_file()
    except OSError as exc:
        logger.warning("cannot look for a registry auth file at %s: %s", path, exc.strerror)
        return False


def load_credentials(path: Path | None) -> CredentialStore:
    """Read ``path``; ``ConfigError`` naming the file and entry when it is malformed."""
    if path is None:
        return CredentialStore()
    try:
        document = json.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read registry auth file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"registry auth file {path} is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"registry auth file {path}: expected a JSON object")
    _warn_helpers(document, path)
    auths = document.get("auths")
    auths = {} if auths is None else auths
    if not isinstance(auths, dict):
        raise ConfigError(f"registry auth file {path}: 'auths' must be an object")
    entries: dict[str, Credentials] = {}
    for key, entry in auths.items():
        credentials = _entry(entry, f"{path}: auths[{key!r}]")
        if credentials is not None:
            entries[_normal_key(key)] = credentials
    logger.debug("read credentials for %d registries from %s", len(entries), path)
    return CredentialStore(entries, path)


def _entry(entry: object, where: str) -> Credentials | None:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected an object")
    auth, username, password = entry.get("auth"), entry.get("username"), entry.get("password")
    if auth:
        if not isinstance(auth, str):
            raise ConfigError(f"{where}.auth: expected a string")
        username, password = _decode_auth(auth, where)
    if not username and not password:
        if entry.get("identitytoken"):
            logger.warning("%s: identity tokens are not supported; entry ignored", where)
        return None
    if not isinstance(username, str) or not isinstance(password, str):
        raise ConfigError(f"{where}: username and password must be strings")
    return Credentials(username, password, where)


def _decode_auth(auth: str, where: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(auth, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ConfigError(f"{where}.auth: not base64 of 'user:password'") from None
    username, colon, password = decoded.partition(":")
    if not colon or not username:
        raise ConfigError(f"{where}.auth: decodes to no 'user:password' pair")
    return username, password


def _warn_helpers(document: dict[str, object], path: Path) -> None:
    helpers = []
    store = document.get("credsStore")
    if isinstance(store, str) and store:
        helpers.append(f"credsStore {store!r}")
    per_registry = document.get("credHelpers")
    if isinstance(per_registry, dict):
        helpers += [f"credHelpers {k!r}: {v!r}" for k, v in per_registry.items()]
    if not helpers:
        return
    key = (str(path), "; ".join(helpers))
    with _warned_lock:
        # Once per process: a daemon builds a client per run and must not repeat itself.
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(
        "%s: credential helpers are not supported, credentials they hold are not used (%s)",
        path,
        key[1],
    )


def _normal_key(key: str) -> str:
    """``https://index.docker.io/v1/`` → ``docker.io``; ``quay.io/org`` stays as it is."""
    if "://" in key:
        # URL keys are docker's: the path (/v1/) is an API version, not a namespace.
        return _normal_host(key.split("://", 1)[1].split("/", 1)[0])
    host, _, namespace = key.partition("/")
    host = _normal_host(host)
    return f"{host}/{namespace.strip('/')}" if namespace.strip("/") else host


def _normal_host(host: str) -> str:
    host = host.lower()
    return "docker.io" if host in _DOCKER_HUB_ALIASES else host
