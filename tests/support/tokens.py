"""A Docker token service for distribution's ``auth: token`` mode.

Implements ``GET <realm>?service=<svc>&scope=<scope>...`` with optional HTTP
basic credentials, answering ``{"token", "access_token", "expires_in",
"issued_at"}`` with an RS256 JWT whose ``x5c`` header carries a self-signed
certificate that the registry trusts through ``rootcertbundle``.

Policy: the right username/password get every requested action on every
repository; anonymous callers get ``pull`` on repositories under ``public/``
and an empty grant elsewhere (the registry then answers 401, as Docker Hub
does); a wrong password gets 401 from the issuer itself.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

PUBLIC_PREFIX = "public/"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _self_signed(key: rsa.RSAPrivateKey, name: str) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        # distribution rejects a CA certificate as the JWT signer (leaf).
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


@dataclass(frozen=True)
class Scope:
    """``type:name:actions`` as in the token request, e.g. ``repository:a/b:pull,push``."""

    type: str
    name: str
    actions: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Scope:
        kind, _, rest = text.partition(":")
        # The name may contain ':' (registry:catalog:*, or a host:port prefix).
        name, _, actions = rest.rpartition(":")
        return cls(kind, name, tuple(a for a in actions.split(",") if a))

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


@dataclass(frozen=True)
class Issued:
    """One token the issuer handed out."""

    username: str | None
    scopes: tuple[str, ...]
    access: tuple[dict[str, Any], ...]
    expires_in: int


class TokenIssuer:
    """A threaded token server on 127.0.0.1; start with ``start()``, end with ``stop()``."""

    def __init__(
        self,
        *,
        workdir: Path,
        username: str = "unpacked",
        password: str = "correct-horse-battery",
        service: str = "unpacked-test-registry",
        issuer: str = "unpacked-test-issuer",
        expires_in: int = 300,
    ) -> None:
        self.username, self.password = username, password
        self.service, self.issuer = service, issuer
        self.expires_in = expires_in
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._cert = _self_signed(self._key, issuer)
        self.cert_path = workdir / "token-issuer-cert.pem"
        self.cert_path.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.issued: list[Issued] = []
        self.refused = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------

    def start(self) -> TokenIssuer:
        handler = type("_Handler", (_Handler,), {"issuer_ref": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="token-issuer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> TokenIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "token issuer not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def realm(self) -> str:
        return f"{self.url}/token"

    # --- counters for tests ----------------------------------------------------

    def reset(self) -> None:
        """Forget counted requests and issued tokens."""
        with self._lock:
            self.requests.clear()
            self.issued.clear()
            self.refused = 0

    def count(self, scope: str | None = None) -> int:
        """Tokens issued for ``scope`` (exact text as requested), or in total."""
        with self._lock:
            return sum(self.requests.values()) if scope is None else self.requests[scope]

    @contextmanager
    def expiring_in(self, seconds: int) -> Iterator[TokenIssuer]:
        """Issue tokens with ``expires_in=seconds`` inside the block, then restore."""
        previous, self.expires_in = self.expires_in, seconds
        try:
            yield self
        finally:
            self.expires_in = previous

    # --- token logic -----------------------------------------------------------

    def grant(self, username: str | None, scope: Scope) -> dict[str, Any]:
        """The ``access`` claim entry for ``scope`` under this issuer's policy."""
        if username is not None:
            actions = list(scope.actions)
        elif scope.type == "repository" and scope.name.startswith(PUBLIC_PREFIX):
            actions = [a for a in scope.actions if a == "pull"]
        else:
            actions = []
        return {"type": scope.type, "name": scope.name, "actions": actions}

    def sign(self, claims: dict[str, Any]) -> str:
        """An RS256 JWT of ``claims`` with our certificate in ``x5c``."""
        der = self._cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        signature = self._key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + _b64url(signature)

    def issue(self, username: str | None, scopes: list[str]) -> dict[str, Any]:
        """The JSON body answering a token request."""
        now = dt.datetime.now(dt.UTC)
        expires_in = self.expires_in
        access = [self.grant(username, Scope.parse(s)) for s in scopes]
        claims = {
            "iss": self.issuer,
            "sub": username or "",
            "aud": self.service,
            "exp": int(now.timestamp()) + expires_in,
            "nbf": int(now.timestamp()) - 1,
            "iat": int(now.timestamp()),
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        token = self.sign(claims)
        with self._lock:
            self.requests.update(scopes or [""])
            self.issued.append(Issued(username, tuple(scopes), tuple(access), expires_in))
        return {
            "token": token,
            "access_token": token,
            "expires_in": expires_in,
            "issued_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def authenticate(self, header: str | None) -> tuple[bool, str | None]:
        """(accepted, username) for an ``Authorization`` header (None: anonymous)."""
        if header is None:
            return True, None
        kind, _, value = header.partition(" ")
        if kind.lower() != "basic":
            return False, None
        try:
            username, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False, None
        if (username, password) == (self.username, self.password):
            return True, username
        return False, None

    def note_refused(self) -> None:
        with self._lock:
            self.refused += 1


class _Handler(BaseHTTPRequestHandler):
    issuer_ref: TokenIssuer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        issuer = self.issuer_ref
        url = urlsplit(self.path)
        if url.path != "/token":
            self._reply(404, {"errors": [{"code": "NOT_FOUND", "message": url.path}]})
            return
        query = parse_qs(url.query)
        if query.get("service", [""])[0] != issuer.service:
            self._reply(400, {"errors": [{"code": "BAD_SERVICE", "message": "unknown service"}]})
            return
        accepted, username = issuer.authenticate(self.headers.get("Authorization"))
        if not accepted:
            issuer.note_refused()
            self._reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]})
            return
        self._reply(200, issuer.issue(username, query.get("scope", [])))

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="unpacked-test-issuer"')
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        # Quiet: pytest shows failures with their own context.
        return
