"""How the registry client connects, retries and authenticates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from urllib.parse import urlsplit

from unpacked import __version__
from unpacked.errors import ConfigError

MiB = 1 << 20


@dataclass(frozen=True)
class RegistryOptions:
    """Client settings; every field has a default fit for production.

    ca_bundle:          extra PEM certificates to trust, on top of the system store
    insecure:           registry names (``host[:port]``) reached over plain HTTP
    mirrors:            registry name → base URL of a pull-through mirror to use instead
    timeout:            seconds to establish a connection, and to wait for each read
                        of a response (a stalled transfer fails; a slow one does not)
    retries:            further attempts after a failure that may pass (connection
                        errors, 500/502/503/504, 429)
    backoff_base:       first delay between attempts, in seconds; doubles each time
    backoff_max:        longest delay between attempts (before jitter)
    max_retry_after:    longest ``Retry-After`` of a 429 we wait out; longer → error
    max_concurrency:    requests in flight per registry endpoint (an open blob stream
                        counts until it is closed)
    max_manifest_bytes: largest manifest or index we accept
    max_config_bytes:   largest image configuration we accept
    auth_file:          docker ``config.json`` / containers ``auth.json``; None: discover
    user_agent:         ``User-Agent`` header
    """

    ca_bundle: Path | None = None
    insecure: frozenset[str] = frozenset()
    mirrors: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    timeout: float = 30.0
    retries: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_retry_after: float = 120.0
    max_concurrency: int = 4
    max_manifest_bytes: int = 4 * MiB
    max_config_bytes: int = 16 * MiB
    auth_file: Path | None = None
    user_agent: str = f"unpacked/{__version__}"

    def __post_init__(self) -> None:
        self._check_positive()
        for registry, url in self.mirrors.items():
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError(f"mirror for {registry}: {url!r} is not an http(s) URL")
        object.__setattr__(self, "insecure", frozenset(self.insecure))
        object.__setattr__(self, "mirrors", MappingProxyType(dict(self.mirrors)))

    def _check_positive(self) -> None:
        for name in (
            "timeout",
            "max_concurrency",
            "max_manifest_bytes",
            "max_config_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"registry option {name} must be positive")
        for name in ("retries", "backoff_base", "backoff_max", "max_retry_after"):
            if getattr(self, name) < 0:
                raise ConfigError(f"registry option {name} must not be negative")
