"""Library values from parsed options: the registry options and the repository publisher."""

from __future__ import annotations

import argparse

from unpacked import errors
from unpacked.publish import Publisher, open_publisher
from unpacked.registry import RegistryOptions


def registry_options(args: argparse.Namespace) -> RegistryOptions:
    mirrors: dict[str, str] = {}
    for item in args.mirror:
        registry, sep, url = item.partition("=")
        if not sep or not registry or not url:
            raise errors.ConfigError(f"--mirror {item!r}: expected REGISTRY=URL")
        mirrors[registry] = url
    return RegistryOptions(
        ca_bundle=args.ca_bundle,
        insecure=frozenset(args.insecure_registry),
        mirrors=mirrors,
        timeout=args.timeout,
        auth_file=args.auth_file,
    )


def publisher_for(
    repo: str | None, wishlist_repository: str | None = None, *, create: bool = True
) -> Publisher:
    """The repository from ``--repo``, else the wish list's; an error when neither names one."""
    spec = repo or wishlist_repository
    if not spec:
        raise errors.ConfigError(
            "no repository: give --repo dir:/path (or 'repository:' in the wish list)"
        )
    return open_publisher(spec, create=create)
