"""Registry authentication as an httpx auth flow: bearer tokens and basic credentials.

The flow does no I/O of its own: it yields requests (the original, a token
request, the retry) and decides from the responses httpx hands back. On a 401
from the registry it reads the ``WWW-Authenticate`` challenge; for ``Bearer`` it
asks the token service at ``realm`` for ``service`` and ``scope`` (with the basic
credentials we have for the registry, anonymously otherwise) and retries once;
for ``Basic`` it retries once with the credentials. Tokens are cached per
(registry endpoint, scope) until they expire, and the challenge per endpoint, so
later requests carry a token from the start and cost no extra round trip. A 401
despite a cached token drops that token and fetches a new one, once.

A 401 from another origin (blob storage after a redirect) is not answered: our
credentials belong to the registry alone.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass

import httpx

from unpacked.errors import AuthenticationError, RegistryError, RegistryProtocolError

from ._challenge import Challenge, parse_challenges
from ._credentials import Credentials
from ._errors import summarize

logger = logging.getLogger(__name__)

DEFAULT_TOKEN_LIFETIME = 60.0
"""Seconds a token lives when the token service does not say (distribution's token spec)."""

_MAX_TOKEN_RESPONSE = 1 << 20
_SUPPORTED_SCHEMES = ("bearer", "basic")

Flow = Generator[httpx.Request, httpx.Response, None]


def origin(url: httpx.URL) -> str:
    """``scheme://host:port`` with the port spelt out, for comparing origins."""
    port = url.port or (443 if url.scheme == "https" else 80)
    return f"{url.scheme}://{url.host}:{port}"


class TokenCache:
    """Bearer tokens per (origin, scope) until they expire, and challenges per origin.

    Shared by all threads of a client, hence the lock. A token is considered
    expired a little early (a tenth of its lifetime, at most 10 s), so that it
    does not run out between our check and the registry's.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._challenges: dict[str, Challenge] = {}

    def token(self, origin: str, scope: str) -> str | None:
        with self._lock:
            entry = self._tokens.get((origin, scope))
            if entry is None:
                return None
            header, expires = entry
            if self._clock() >= expires:
                del self._tokens[(origin, scope)]
                return None
            return header

    def store(self, origin: str, scope: str, header: str, lifetime: float) -> None:
        margin = min(10.0, lifetime / 10)
        with self._lock:
            self._tokens[(origin, scope)] = (header, self._clock() + lifetime - margin)

    def drop(self, origin: str, scope: str, header: str) -> None:
        """Forget ``header`` unless another thread already replaced it."""
        with self._lock:
            entry = self._tokens.get((origin, scope))
            if entry is not None and entry[0] == header:
                del self._tokens[(origin, scope)]

    def challenge(self, origin: str) -> Challenge | None:
        with self._lock:
            return self._challenges.get(origin)

    def remember(self, origin: str, challenge: Challenge) -> None:
        with self._lock:
            self._challenges[origin] = challenge


class _TokenRequest(httpx.Request):
    """A request to a token service (its response body is read for the flow)."""


@dataclass(frozen=True)
class _Context:
    origin: str
    registry: str


class RegistryAuth(httpx.Auth):
    """The auth flow for requests about one repository of one registry.

    registry:    registry name, for messages
    scope:       the token scope needed, e.g. ``repository:library/ubuntu:pull``
    credentials: basic credentials for this registry, or None (anonymous)
    cache:       the client's shared ``TokenCache``
    timeout:     timeouts for token requests (built here, not by the client)
    user_agent:  ``User-Agent`` for token requests
    """

    def __init__(
        self,
        *,
        registry: str,
        scope: str,
        credentials: Credentials | None,
        cache: TokenCache,
        timeout: httpx.Timeout,
        user_agent: str,
    ) -> None:
        self._registry = registry
        self._scope = scope
        self._credentials = credentials
        self._cache = cache
        self._timeout = timeout
        self._user_agent = user_agent

    def sync_auth_flow(self, request: httpx.Request) -> Flow:
        # The only I/O: a token service's answer is read (bounded) before the flow sees it.
        flow = self._flow(request)
        outgoing = next(flow)
        while True:
            response = yield outgoing
            if isinstance(outgoing, _TokenRequest):
                _read_bounded(response, self._registry)
            try:
                outgoing = flow.send(response)
            except StopIteration:
                return

    def _flow(self, request: httpx.Request) -> Flow:
        ctx = _Context(origin(request.url), self._registry)
        sent = self._cache.token(ctx.origin, self._scope)
        known = self._cache.challenge(ctx.origin)
        if sent is None and known is not None:
            sent = yield from self._authorize(known, ctx)
        if sent is not None:
            request.headers["Authorization"] = sent
        response = yield request
        challenge = self._challenge(response, ctx)
        if challenge is None:
            return
        if sent is not None:
            self._cache.drop(ctx.origin, self._scope, sent)
        if challenge.scheme == "basic" and self._basic() in (None, sent):
            return  # nothing new to try: the 401 stands
        fresh = yield from self._authorize(challenge, ctx)
        if fresh is None:
            return
        request.headers["Authorization"] = fresh
        yield request

    def _challenge(self, response: httpx.Response, ctx: _Context) -> Challenge | None:
        """The challenge to answer, if this is the registry's own 401 and it has one."""
        if response.status_code != 401 or origin(response.request.url) != ctx.origin:
            return None
        found: list[Challenge] = []
        for value in response.headers.get_list("WWW-Authenticate"):
            try:
                found += parse_challenges(value)
            except ValueError as exc:
                raise RegistryProtocolError(f"registry {ctx.registry}: {exc}") from None
        for scheme in _SUPPORTED_SCHEMES:
            for challenge in found:
                if challenge.scheme == scheme:
                    self._cache.remember(ctx.origin, challenge)
                    return challenge
        return None

    def _authorize(
        self, challenge: Challenge, ctx: _Context
    ) -> Generator[httpx.Request, httpx.Response, str | None]:
        """The ``Authorization`` value answering ``challenge`` (None: none to give)."""
        if challenge.scheme == "basic":
            return self._basic()
        token_request = self._token_request(challenge, ctx)
        response = yield token_request
        return self._token_from(response, ctx)

    def _basic(self) -> str | None:
        if self._credentials is None:
            return None
        pair = f"{self._credentials.username}:{self._credentials.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    def _token_request(self, challenge: Challenge, ctx: _Context) -> _TokenRequest:
        realm = challenge.get("realm")
        if not realm:
            raise RegistryProtocolError(
                f"registry {ctx.registry}: Bearer challenge without a realm"
            )
        try:
            url = httpx.URL(realm)
        except httpx.InvalidURL as exc:
            raise RegistryProtocolError(
                f"registry {ctx.registry}: invalid token realm {realm!r} ({exc})"
            ) from None
        if url.scheme not in ("http", "https") or not url.host:
            raise RegistryProtocolError(f"registry {ctx.registry}: invalid token realm {realm!r}")
        headers = {"User-Agent": self._user_agent, "Accept": "application/json"}
        params = {"scope": self._scope}
        if challenge.get("service"):
            params["service"] = challenge.get("service") or ""
        basic = self._basic()
        if basic is not None and self._credentials is not None:
            self._refuse_plain_http(url, ctx)
            headers["Authorization"] = basic
            params["account"] = self._credentials.username
        return _TokenRequest(
            "GET",
            url.copy_merge_params(params),
            headers=headers,
            extensions={"timeout": self._timeout.as_dict()},
        )

    def _refuse_plain_http(self, realm: httpx.URL, ctx: _Context) -> None:
        # A registry reached over TLS must not be able to send our password in clear text.
        if realm.scheme == "http" and ctx.origin.startswith("https:"):
            raise AuthenticationError(
                f"registry {ctx.registry} asks for credentials to be sent over plain HTTP "
                f"to {realm.host}; refused"
            )

    def _token_from(self, response: httpx.Response, ctx: _Context) -> str | None:
        status = response.status_code
        if status >= 500 or status == 429:
            return None  # the token service's answer stands; the client retries it
        who = (
            f"user {self._credentials.username!r} ({self._credentials.source})"
            if self._credentials is not None
            else "anonymous access"
        )
        service = response.request.url.host
        if status in (401, 403):
            raise AuthenticationError(
                f"token service {service} of registry {ctx.registry} refused {who} "
                f"for {self._scope} ({summarize(response.content)})"
            )
        if status != 200:
            raise RegistryError(
                f"token service {service} of registry {ctx.registry} answered {status} "
                f"for {self._scope} ({summarize(response.content)})"
            )
        token, lifetime = _parse_token(response.content, service, ctx.registry)
        header = f"Bearer {token}"
        self._cache.store(ctx.origin, self._scope, header, lifetime)
        logger.debug("token for %s on %s, valid %.0f s", self._scope, ctx.registry, lifetime)
        return header


def _parse_token(body: bytes, service: str, registry: str) -> tuple[str, float]:
    where = f"token service {service} of registry {registry}"
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise RegistryProtocolError(f"{where}: answer is not JSON") from None
    if not isinstance(document, dict):
        raise RegistryProtocolError(f"{where}: answer is not a JSON object")
    token = document.get("token") or document.get("access_token")
    if not isinstance(token, str) or not token:
        raise RegistryProtocolError(f"{where}: answer holds no token")
    lifetime = document.get("expires_in")
    if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
        lifetime = DEFAULT_TOKEN_LIFETIME
    return token, float(lifetime)


def _read_bounded(response: httpx.Response, registry: str) -> None:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > _MAX_TOKEN_RESPONSE:
        response.close()
        raise RegistryProtocolError(
            f"token service {response.request.url.host} of registry {registry}: "
            f"answer of {declared} bytes is too large"
        )
    response.read()
