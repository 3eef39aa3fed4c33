"""Where requests for a registry go: scheme, host and an optional mirror. No I/O."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from unpacked.reference import DOCKER_HUB, DOCKER_HUB_API, Reference

from ._options import RegistryOptions


@dataclass(frozen=True)
class Endpoint:
    """The base URL serving a registry's ``/v2/`` API.

    registry:        the registry name of the reference (used in messages)
    base:            ``scheme://host[:port][/prefix]`` without a trailing slash
    credentials_key: the host whose credentials may be sent here (a mirror's own,
                     never the mirrored registry's)
    """

    registry: str
    base: str
    credentials_key: str

    def url(self, path: str) -> str:
        return f"{self.base}/v2/{path}"


def api_host(registry: str) -> str:
    """The host serving ``registry``'s API (Docker Hub's differs from its name)."""
    return DOCKER_HUB_API if registry == DOCKER_HUB else registry


def is_loopback(registry: str) -> bool:
    """``localhost``, ``127.0.0.0/8`` or ``::1``, with or without a port."""
    if registry.startswith("["):
        host = registry[1 : registry.find("]")] if "]" in registry else registry
    else:
        host = registry.rsplit(":", 1)[0] if registry.count(":") == 1 else registry
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def endpoint_for(reference: Reference, options: RegistryOptions) -> Endpoint:
    """The endpoint for ``reference``: its mirror if one is configured, else the registry.

    Plain HTTP is used when the reference says so (``http://`` URL form), for
    registries listed in ``insecure``, and for loopback registries without a
    scheme (as docker does); everything else is HTTPS.
    """
    registry = reference.registry
    mirror = options.mirrors.get(registry)
    if mirror is not None:
        return Endpoint(registry, mirror.rstrip("/"), urlsplit(mirror).netloc)
    return Endpoint(registry, f"{scheme_for(reference, options)}://{api_host(registry)}", registry)


def scheme_for(reference: Reference, options: RegistryOptions) -> str:
    """``http`` or ``https``: the scheme the registry of ``reference`` is reached over."""
    if reference.scheme:
        return reference.scheme
    if reference.registry in options.insecure or is_loopback(reference.registry):
        return "http"
    return "https"
