"""Real CNCF distribution (``docker-registry`` 2.8) servers on 127.0.0.1, and skopeo.

``start_registry`` runs ``/usr/bin/docker-registry serve`` with filesystem
storage, in one of three auth modes (none, htpasswd basic, token), on a free
port; ``RegistryServer.stop`` (or leaving its ``with`` block) ends it.
``skopeo_copy`` pushes images the way real clients do.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
import yaml

from .tokens import TokenIssuer

REGISTRY_BIN = "/usr/bin/docker-registry"
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
SKOPEO_TIMEOUT = 120.0
DEFAULT_USERNAME = "unpacked"
DEFAULT_PASSWORD = "correct-horse-battery"

# If pytest is killed before its teardown, the registry still goes away instead of
# holding its port and storage (preexec_fn would do the same, but is unsafe with threads).
_DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "TERM", "--"] if shutil.which("setpriv") else []

Auth = Literal["none", "basic", "token"]


class HarnessError(RuntimeError):
    """A test server or tool could not be started or failed."""


def free_port() -> int:
    """A port that was free a moment ago (the caller retries if it is taken by then)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(no log: {error})"


@dataclass
class RegistryServer:
    """A running docker-registry; a context manager that stops it on exit."""

    process: subprocess.Popen[bytes]
    port: int
    auth: Auth
    storage: Path
    log_path: Path
    username: str | None = None
    password: str | None = None
    issuer: TokenIssuer | None = None
    _owns_issuer: bool = field(default=False, repr=False)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def creds(self) -> str | None:
        """``user:password`` as skopeo's ``--creds`` wants it, or None without auth."""
        return None if self.username is None else f"{self.username}:{self.password}"

    def blob_path(self, digest: str) -> Path:
        """Where the registry stores blob ``digest`` (for tests that corrupt one).

        Blobs are shared by every repository and by all registries on this
        storage: corrupt only blobs that exist in images the test built itself.
        """
        algorithm, _, hexpart = digest.partition(":")
        return (
            self.storage / "docker/registry/v2/blobs" / algorithm / hexpart[:2] / hexpart / "data"
        )

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log_path, lines)

    def stop(self) -> None:
        """Terminate the registry (bounded wait, then kill); idempotent."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STOP_TIMEOUT)
        if self._owns_issuer and self.issuer is not None:
            self.issuer.stop()

    def __enter__(self) -> RegistryServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _htpasswd(workdir: Path, username: str, password: str) -> Path:
    # distribution only accepts bcrypt entries, hence -B.
    result = subprocess.run(
        ["htpasswd", "-Bbn", username, password], capture_output=True, check=True, timeout=30
    )
    path = workdir / "htpasswd"
    path.write_bytes(result.stdout)
    return path


def _auth_section(
    auth: Auth, workdir: Path, username: str, password: str, issuer: TokenIssuer | None
) -> dict[str, object]:
    if auth == "none":
        return {}
    if auth == "basic":
        htpasswd = _htpasswd(workdir, username, password)
        return {"htpasswd": {"realm": "unpacked-test", "path": str(htpasswd)}}
    assert issuer is not None
    return {
        "token": {
            "realm": issuer.realm,
            "service": issuer.service,
            "issuer": issuer.issuer,
            "rootcertbundle": str(issuer.cert_path),
        }
    }


def _config(storage: Path, port: int, auth_section: dict[str, object]) -> dict[str, object]:
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        # No blob descriptor cache: several registries share this storage, and an
        # in-memory cache in one would go stale when another deletes or pushes.
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": "unpacked-test-secret"},
    }
    if auth_section:
        config["auth"] = auth_section
    return config


def _wait_ready(server: RegistryServer, deadline: float) -> bool:
    """True once /v2/ answers; False if the process died (e.g. port taken)."""
    expected = 200 if server.auth == "none" else 401
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            if httpx.get(f"{server.url}/v2/", timeout=2).status_code == expected:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    server.stop()
    raise HarnessError(
        f"docker-registry on {server.host} not ready after {READY_TIMEOUT:.0f}s; "
        f"log tail:\n{server.log_tail()}"
    )


def start_registry(
    storage: Path,
    *,
    auth: Auth = "none",
    workdir: Path,
    username: str = DEFAULT_USERNAME,
    password: str = DEFAULT_PASSWORD,
    issuer: TokenIssuer | None = None,
    attempts: int = 5,
) -> RegistryServer:
    """Start a registry serving ``storage``; config and log go to ``workdir``.

    For ``auth="token"`` the registry trusts ``issuer`` (whose credentials then
    apply); without one, an issuer is started and stopped with the registry.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    storage.mkdir(parents=True, exist_ok=True)
    owns_issuer = auth == "token" and issuer is None
    if owns_issuer:
        issuer = TokenIssuer(workdir=workdir, username=username, password=password).start()
    if issuer is not None and auth == "token":
        username, password = issuer.username, issuer.password
    auth_section = _auth_section(auth, workdir, username, password, issuer)
    for attempt in range(attempts):
        server = _launch(storage, auth, workdir, auth_section, attempt)
        server.issuer = issuer if auth == "token" else None
        server._owns_issuer = owns_issuer
        if auth != "none":
            server.username, server.password = username, password
        if _wait_ready(server, time.monotonic() + READY_TIMEOUT):
            return server
    if owns_issuer and issuer is not None:
        issuer.stop()
    raise HarnessError(
        f"docker-registry exited at start {attempts} times; log tail:\n{server.log_tail()}"
    )


def _launch(
    storage: Path, auth: Auth, workdir: Path, auth_section: dict[str, object], attempt: int
) -> RegistryServer:
    port = free_port()
    config_path = workdir / f"registry-{auth}.yml"
    config_path.write_text(yaml.safe_dump(_config(storage, port, auth_section)))
    log_path = workdir / f"registry-{auth}.log"
    with log_path.open("ab") as log:
        log.write(f"--- attempt {attempt + 1} on port {port}\n".encode())
        log.flush()
        process = subprocess.Popen(
            [*_DIE_WITH_PARENT, REGISTRY_BIN, "serve", str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Own session: a ^C in the terminal reaches pytest, whose teardown stops us.
            start_new_session=True,
        )
    return RegistryServer(process, port, auth, storage, log_path)


def skopeo_copy(
    src: str,
    dest: str,
    *,
    src_creds: str | None = None,
    dest_creds: str | None = None,
    format: Literal["oci", "v2s2"] | None = None,
    all: bool = False,
    preserve_digests: bool | None = None,
    timeout: float = SKOPEO_TIMEOUT,
) -> str:
    """``skopeo copy src dest`` over plain HTTP; return the pushed manifest digest.

    Without a format conversion, digests are preserved by default, so a
    ``BuiltImage`` pushed from an OCI layout keeps its manifest and blob digests
    (skopeo would otherwise be free to substitute differently compressed blobs
    it remembers from earlier copies).
    """
    if preserve_digests is None:
        preserve_digests = format is None
    fd, name = tempfile.mkstemp(prefix="skopeo-digest-")
    os.close(fd)
    digestfile = Path(name)
    args = ["skopeo", "--insecure-policy", "copy", "--quiet", "--retry-times", "0"]
    args += ["--src-tls-verify=false", "--dest-tls-verify=false", "--digestfile", str(digestfile)]
    args += ["--src-creds", src_creds] if src_creds else []
    args += ["--dest-creds", dest_creds] if dest_creds else []
    args += ["--format", format] if format else []
    args += ["--all"] if all else []
    args += ["--preserve-digests"] if preserve_digests else []
    try:
        run_tool([*args, src, dest], timeout=timeout)
        return digestfile.read_text().strip()
    finally:
        digestfile.unlink(missing_ok=True)


def skopeo_inspect(image: str, *, creds: str | None = None, raw: bool = False) -> bytes:
    """``skopeo inspect [--raw] image`` over plain HTTP; its stdout."""
    args = ["skopeo", "--insecure-policy", "inspect", "--retry-times", "0", "--tls-verify=false"]
    args += ["--creds", creds] if creds else ["--no-creds"]
    args += ["--raw"] if raw else []
    return run_tool([*args, image]).stdout


def run_tool(
    args: list[str], *, timeout: float = SKOPEO_TIMEOUT
) -> subprocess.CompletedProcess[bytes]:
    """Run a command with a timeout; raise ``HarnessError`` with its stderr on failure."""
    if shutil.which(args[0]) is None:
        raise HarnessError(f"{args[0]} is not installed")
    try:
        result = subprocess.run(
            args, check=False, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as error:
        raise HarnessError(f"{' '.join(args)} timed out after {timeout:.0f}s") from error
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace").strip()
        raise HarnessError(f"{' '.join(args)} failed ({result.returncode}): {stderr}")
    return result
