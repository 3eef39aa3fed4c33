"""Image platforms (``os/architecture[/variant]``) with the usual aliases normalised.

``x86_64`` and ``aarch64`` are what ``uname -m`` prints; registries use Go's names
(``amd64``, ``arm64``). An ``arm64`` image without a variant is an ``arm64/v8`` image
(no other 64-bit ARM variant is in use), so the two spellings compare equal.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from unpacked.errors import ConfigError

_ARCHITECTURE_ALIASES = {
    "x86_64": "amd64",
    "x86-64": "amd64",
    "aarch64": "arm64",
    "armhf": "arm",
    "armel": "arm",
    "i386": "386",
    "i686": "386",
}
_OS_ALIASES = {"macos": "darwin"}
_DEFAULT_VARIANT = {"arm64": "v8"}
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def _normal_variant(architecture: str, variant: str | None) -> str | None:
    if not variant:
        return _DEFAULT_VARIANT.get(architecture)
    variant = variant.lower()
    # Docker writes arm variants both as "v7" and as "7".
    if variant.isdigit() and architecture in ("arm", "arm64"):
        return f"v{variant}"
    return variant


@dataclass(frozen=True)
class Platform:
    """An image platform, normalised on construction (lower case, aliases resolved,
    arm64 → arm64/v8), so equal platforms compare equal however they were spelt."""

    os: str
    architecture: str
    variant: str | None = None

    def __post_init__(self) -> None:
        os = self.os.lower()
        architecture = self.architecture.lower()
        architecture = _ARCHITECTURE_ALIASES.get(architecture, architecture)
        object.__setattr__(self, "os", _OS_ALIASES.get(os, os))
        object.__setattr__(self, "architecture", architecture)
        object.__setattr__(self, "variant", _normal_variant(architecture, self.variant))

    @classmethod
    def parse(cls, text: str) -> Platform:
        """Parse ``os/architecture[/variant]``; raise ``ConfigError`` naming the problem."""
        parts = text.strip().split("/")
        if not 2 <= len(parts) <= 3 or not all(_NAME_RE.match(p.lower()) for p in parts):
            raise ConfigError(f"invalid platform {text!r}: expected os/architecture[/variant]")
        return cls(*parts)

    def matches(self, candidate: Platform) -> bool:
        """Whether an image of platform ``candidate`` can serve a request for this one.

        OS and architecture must agree. A variant is compared only when both sides
        name one: asking for ``linux/amd64`` accepts any amd64 variant, and an image
        that does not state its variant is taken at its word for the architecture.
        """
        if (self.os, self.architecture) != (candidate.os, candidate.architecture):
            return False
        return (
            self.variant is None or candidate.variant is None or self.variant == candidate.variant
        )

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base


DEFAULT = Platform("linux", "amd64")
"""The platform we unpack when nobody asks for another."""
