"""The registry client: manifests, image configs, blobs and tags (pull side of the OCI
distribution API), verified against their digests."""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

import httpx

from unpacked import mediatype
from unpacked.digest import Digest
from unpacked.errors import (
    ConfigError,
    InvalidReferenceError,
    RegistryProtocolError,
    VerificationError,
)
from unpacked.manifest import (
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    parse_image_config,
    parse_manifest_or_index,
)
from unpacked.platform import DEFAULT, Platform
from unpacked.reference import Reference

from ._answers import (
    check_config,
    check_length,
    check_manifest,
    display,
    image_platform,
    next_page,
    parse_tags,
    read_capped,
    verify_manifest,
)
from ._auth import RegistryAuth, TokenCache
from ._credentials import Credentials, CredentialStore, discover_auth_file, load_credentials
from ._endpoint import Endpoint, endpoint_for
from ._errors import Subject
from ._nesting import check_not_only_nested
from ._options import RegistryOptions
from ._retry import RetryPolicy
from ._stream import CHUNK_SIZE, BlobStream
from ._transport import HttpSession

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_OPTIONS = RegistryOptions()
MAX_TAG_PAGES = 1000
"""Pages of a tag list we follow before calling the registry broken."""

_Opened = AbstractContextManager[httpx.Response]
_ACCEPT_MANIFESTS = ", ".join(mediatype.ACCEPT)
_BLOB_HEADERS = {"Accept": "*/*", "Accept-Encoding": "identity"}


@dataclass(frozen=True)
class _Call:
    """What every request about one repository needs: where, and what to call it."""

    ref: Reference
    endpoint: Endpoint
    subject: Subject
    credentials: Credentials | None


@dataclass(frozen=True)
class FetchedManifest:
    """A manifest or index exactly as served, verified, with its parsed content."""

    descriptor: Descriptor
    raw: bytes
    content: Manifest | Index


@dataclass(frozen=True)
class ResolvedImage:
    """Everything about one image for one platform, short of its layers' content.

    top / top_raw:    what the reference points to (an index or the manifest itself)
    index:            the parsed index, when the reference points to one
    manifest_*:       the platform's image manifest (descriptor, bytes as served, parsed)
    config_raw:       the image configuration's bytes, verified against the manifest
    config:           the parsed configuration
    platform:         the platform of the image (from the index entry, else the config)
    """

    reference: Reference
    top: Descriptor
    top_raw: bytes
    index: Index | None
    manifest_descriptor: Descriptor
    manifest_raw: bytes
    manifest: Manifest
    config_raw: bytes
    config: ImageConfig
    platform: Platform

    @property
    def layers(self) -> tuple[Descriptor, ...]:
        return self.manifest.layers

    @property
    def image_id(self) -> Digest:
        """The config digest, which names the image's flat tree."""
        return self.manifest.config.digest


class RegistryClient:
    """A thread-safe client for pulling from OCI / Docker registries.

    Every byte it returns is verified: manifests against the reference's digest
    (else the registry's ``Docker-Content-Digest``), configs and blobs against
    their descriptors. Transient failures (connection errors, timeouts, 5xx,
    429) are retried with backoff; everything else raises an ``UnpackedError``
    naming the image or blob and the registry.

    Credentials are read once, at construction, from ``options.auth_file`` or
    the usual places (see ``_credentials``). ``sleep`` and ``clock`` exist so
    that tests need not wait; the defaults are the real ones.
    """

    def __init__(
        self,
        options: RegistryOptions = DEFAULT_OPTIONS,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options
        self._credentials: CredentialStore = load_credentials(
            options.auth_file or discover_auth_file()
        )
        self._tokens = TokenCache(clock)
        self._retry = RetryPolicy(
            options.retries,
            options.backoff_base,
            options.backoff_max,
            options.max_retry_after,
            sleep,
        )
        self._http = HttpSession(options, transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- manifests ------------------------------------------------------------------

    def head_manifest(self, ref: Reference) -> Descriptor:
        """What ``ref`` points to, by a HEAD request (cheap: no body, and Docker Hub
        does not count it against the pull limit). Falls back to GET when the
        registry's answer lacks the digest, size or a manifest media type."""
        pinned = _pinned(ref)
        what = f"image {display(ref)}"
        headers, _ = self._manifest_request(ref, "HEAD", _version(ref, pinned), what)
        descriptor = self._descriptor_from_headers(headers, what)
        if descriptor is None:
            logger.debug("HEAD of %s lacks digest, size or type; using GET", what)
            return self.get_manifest(ref).descriptor
        if pinned is not None and descriptor.digest != pinned:
            raise VerificationError(
                f"{what}: registry {ref.registry} reports digest {descriptor.digest}"
            )
        return descriptor

    def get_manifest(self, ref: Reference) -> FetchedManifest:
        """The manifest or index ``ref`` points to, bytes exactly as served, verified."""
        pinned = _pinned(ref)
        return self._fetch_manifest(ref, pinned, f"image {display(ref)}")

    def resolve_image(self, ref: Reference, platform: Platform = DEFAULT) -> ResolvedImage:
        """Manifest and config of ``ref`` for ``platform``, checked for consistency.

        Through an index, the entry for ``platform`` is chosen (``NotFoundError``
        lists the platforms on offer). The config must describe the same
        platform, have one diff_id per layer, and be an image config at all.
        """
        top = self.get_manifest(ref)
        index = top.content if isinstance(top.content, Index) else None
        if index is not None:
            what = f"image {display(ref)} in registry {ref.registry}"
            check_not_only_nested(index, top.descriptor.digest, what, platform, self._nested(ref))
        chosen = top if index is None else self._platform_manifest(ref, index, platform)
        manifest = chosen.content
        if not isinstance(manifest, Manifest):
            raise RegistryProtocolError(
                f"image {display(ref)}: index entry {chosen.descriptor.digest} is itself an "
                "index; nested indexes are not supported"
            )
        check_manifest(ref, manifest)
        config_raw = self.get_blob(ref, manifest.config, self.options.max_config_bytes)
        config = parse_image_config(
            config_raw,
            what=f"config {manifest.config.digest} of image {display(ref)} "
            f"in registry {ref.registry}",
        )
        chosen_platform = image_platform(ref, chosen.descriptor, config, platform, index)
        check_config(ref, manifest, config)
        return ResolvedImage(
            reference=ref,
            top=top.descriptor,
            top_raw=top.raw,
            index=index,
            manifest_descriptor=chosen.descriptor,
            manifest_raw=chosen.raw,
            manifest=manifest,
            config_raw=config_raw,
            config=config,
            platform=chosen_platform,
        )

    def platforms(self, ref: Reference) -> tuple[Platform, ...]:
        """The platforms ``ref`` offers: an index's entries, or the single image's."""
        top = self.get_manifest(ref)
        if isinstance(top.content, Index):
            return top.content.platforms()
        raw = self.get_blob(ref, top.content.config, self.options.max_config_bytes)
        what = (
            f"config {top.content.config.digest} of image {display(ref)} in registry {ref.registry}"
        )
        return (parse_image_config(raw, what=what).platform,)

    # --- blobs ----------------------------------------------------------------------

    def fetch_blob(
        self,
        ref: Reference,
        descriptor: Descriptor,
        consume: Callable[[BlobStream], T],
        cancel: threading.Event | None = None,
    ) -> T:
        """Stream the blob ``descriptor`` of ``ref``'s repository into ``consume``.

        The stream verifies digest and size as it is read; whatever ``consume``
        leaves unread is read and verified after it returns, so a returned
        result always comes from verified bytes. If the connection fails midway,
        the fetch starts again from the first byte and ``consume`` is called
        again with a fresh stream: ``consume`` must be restartable (discard what
        an earlier call wrote). Verification failures are final.

        The stream holds one of the registry's concurrency slots until it ends:
        ``consume`` must not wait for other requests to the same registry.

        Once ``cancel`` is set, a failed attempt is not tried again (``RetryPolicy``).
        """
        call = self._call(ref, f"blob {descriptor.digest} of {ref.repository}")
        url = call.endpoint.url(f"{ref.repository}/blobs/{descriptor.digest}")
        return self._retry.run(
            functools.partial(self._blob_attempt, call, url, descriptor, consume), cancel
        )

    def get_blob(self, ref: Reference, descriptor: Descriptor, max_size: int) -> bytes:
        """A small blob (a config), whole and verified; refuse one over ``max_size`` bytes."""
        if descriptor.size > max_size:
            raise RegistryProtocolError(
                f"blob {descriptor.digest} of {ref.registry}/{ref.repository} is "
                f"{descriptor.size} bytes, more than the {max_size} accepted"
            )
        return self.fetch_blob(ref, descriptor, _read_all)

    # --- tags -----------------------------------------------------------------------

    def list_tags(self, ref: Reference, page_size: int | None = None) -> list[str]:
        """Every tag of ``ref``'s repository, following ``Link: rel="next"`` pages."""
        call = self._call(ref, f"tags of {ref.repository}")
        url = httpx.URL(call.endpoint.url(f"{ref.repository}/tags/list"))
        if page_size is not None:
            if page_size <= 0:
                raise ConfigError(f"tag list page size must be positive, not {page_size}")
            url = url.copy_merge_params({"n": page_size})
        tags: dict[str, None] = {}
        seen: set[httpx.URL] = set()
        for _ in range(MAX_TAG_PAGES):
            seen.add(url)
            found, links = self._retry.run(functools.partial(self._tags_page, call, url))
            tags.update(dict.fromkeys(found))
            following = next_page(links, url, seen, call.subject)
            if following is None:
                return list(tags)
            url = following
        raise RegistryProtocolError(
            f"registry {ref.registry}: {call.subject.what} go on for more than "
            f"{MAX_TAG_PAGES} pages"
        )

    # --- internals ------------------------------------------------------------------

    def _call(self, ref: Reference, what: str) -> _Call:
        endpoint = endpoint_for(ref, self.options)
        found = self._credentials.lookup(endpoint.credentials_key, ref.repository)
        if found is not None:
            note = f"credentials of user {found.username!r} were used ({found.source})"
        else:
            where = self._credentials.path or "no auth file found"
            note = f"no credentials for {endpoint.credentials_key} ({where})"
        return _Call(ref, endpoint, Subject(endpoint.registry, what, note), found)

    def _auth(self, call: _Call) -> RegistryAuth:
        return RegistryAuth(
            registry=call.endpoint.registry,
            scope=f"repository:{call.ref.repository}:pull",
            credentials=call.credentials,
            cache=self._tokens,
            timeout=self._http.timeout,
            user_agent=self.options.user_agent,
        )

    def _open(self, call: _Call, method: str, url: str, headers: dict[str, str]) -> _Opened:
        return self._http.open(
            method, url, subject=call.subject, auth=self._auth(call), headers=headers
        )

    def _manifest_request(
        self, ref: Reference, method: str, version: str, what: str
    ) -> tuple[httpx.Headers, bytes]:
        call = self._call(ref, what)
        url = call.endpoint.url(f"{ref.repository}/manifests/{version}")
        return self._retry.run(functools.partial(self._manifest_attempt, call, method, url))

    def _manifest_attempt(self, call: _Call, method: str, url: str) -> tuple[httpx.Headers, bytes]:
        with self._open(call, method, url, {"Accept": _ACCEPT_MANIFESTS}) as response:
            if method == "HEAD":
                return response.headers, b""
            cap = self.options.max_manifest_bytes
            return response.headers, read_capped(response, cap, call.subject)

    def _fetch_manifest(
        self, ref: Reference, expected: Digest | None, what: str, size: int | None = None
    ) -> FetchedManifest:
        headers, raw = self._manifest_request(ref, "GET", _version(ref, expected), what)
        where = f"{what} in registry {ref.registry}"
        digest = verify_manifest(raw, expected, headers.get("Docker-Content-Digest"), where)
        if size is not None and len(raw) != size:
            raise VerificationError(f"{where}: got {len(raw)} bytes, expected {size}")
        content = parse_manifest_or_index(
            raw, headers.get("Content-Type"), what=f"manifest {digest} of {where}"
        )
        return FetchedManifest(Descriptor(content.media_type, digest, len(raw)), raw, content)

    def _platform_manifest(
        self, ref: Reference, index: Index, platform: Platform
    ) -> FetchedManifest:
        entry = index.select(platform, what=f"image {display(ref)} in registry {ref.registry}")
        fetched = self._fetch_manifest(
            ref, entry.digest, f"image {display(ref)} for {entry.platform}", entry.size
        )
        if fetched.descriptor.media_type != entry.media_type:
            logger.warning(
                "image %s: the index lists %s as %s but the registry serves it as %s",
                display(ref),
                entry.digest,
                entry.media_type,
                fetched.descriptor.media_type,
            )
        return FetchedManifest(
            Descriptor(fetched.descriptor.media_type, entry.digest, entry.size, entry.platform),
            fetched.raw,
            fetched.content,
        )

    def _nested(self, ref: Reference) -> Callable[[Descriptor], Index | Manifest]:
        def fetch(entry: Descriptor) -> Index | Manifest:
            what = f"image {display(ref)}: nested index {entry.digest}"
            return self._fetch_manifest(ref, entry.digest, what, entry.size).content

        return fetch

    def _descriptor_from_headers(self, headers: httpx.Headers, what: str) -> Descriptor | None:
        media_type = mediatype.essence(headers.get("Content-Type", ""))
        length = headers.get("Content-Length", "")
        try:
            digest = Digest.parse(headers.get("Docker-Content-Digest", ""))
        except ValueError:
            return None
        known = mediatype.MANIFEST_TYPES | mediatype.INDEX_TYPES
        if media_type not in known or not length.isdigit():
            return None
        if int(length) > self.options.max_manifest_bytes:
            raise RegistryProtocolError(
                f"{what}: manifest of {length} bytes, more than the "
                f"{self.options.max_manifest_bytes} accepted"
            )
        return Descriptor(media_type, digest, int(length))

    def _blob_attempt(
        self,
        call: _Call,
        url: str,
        descriptor: Descriptor,
        consume: Callable[[BlobStream], T],
    ) -> T:
        with self._open(call, "GET", url, _BLOB_HEADERS) as response:
            check_length(response, descriptor, call.subject)
            stream = BlobStream(response.iter_raw(CHUNK_SIZE), descriptor, call.subject)
            try:
                result = consume(stream)
                stream.drain()
            except Exception as exc:
                stream.settle(exc)
                raise
            return result

    def _tags_page(self, call: _Call, url: httpx.URL) -> tuple[list[str], list[str]]:
        with self._open(call, "GET", str(url), {"Accept": "application/json"}) as response:
            body = read_capped(response, self.options.max_manifest_bytes, call.subject)
            return parse_tags(body, call.subject), response.headers.get_list("Link")


def _pinned(ref: Reference) -> Digest | None:
    if ref.digest is None:
        return None
    try:
        return Digest.parse(ref.digest)
    except ValueError as exc:
        raise InvalidReferenceError(display(ref), str(exc)) from None


def _version(ref: Reference, pinned: Digest | None) -> str:
    """What goes after ``/manifests/``: the digest when pinned (it wins over the tag)."""
    if pinned is not None:
        return str(pinned)
    if ref.tag is None or any(c in ref.tag for c in "*?"):
        raise InvalidReferenceError(
            display(ref), "a tag pattern names no image; expand it with list_tags first"
        )
    return ref.tag


def _read_all(stream: BlobStream) -> bytes:
    return stream.read()
