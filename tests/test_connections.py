"""Registry connections are reused, and the images of one registry are checked concurrently.

A no-op ``convert`` goes through ``CountingProxy`` (a TCP relay in front of the real
registry) that counts the connections the client opens; a ``convert --dry-run`` of a
wildcard must HEAD every tag it matches.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from support.oci import TarEntry, build_image, tar_bytes
from support.proxy import CountingProxy
from support.registry import RegistryServer
from support.samples import push, put_manifest
from unpacked.batch import BatchOptions, convert_wishlist
from unpacked.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, main
from unpacked.cli import _wishlist as commands
from unpacked.errors import ConfigError
from unpacked.publish import open_publisher
from unpacked.registry import RegistryClient, RegistryOptions
from unpacked.wishlist import loads

REPOSITORY = "conn/many"
TAGS = [f"t{i:02d}" for i in range(12)]


@dataclass(frozen=True)
class Proxied:
    proxy: CountingProxy
    registry: RegistryServer

    def refs(self, tags: list[str]) -> list[str]:
        return [f"{self.proxy.host}/{REPOSITORY}:{tag}" for tag in tags]


@pytest.fixture(scope="module")
def proxied(
    registry: RegistryServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxied]:
    layout = tmp_path_factory.mktemp("conn-layout")
    layer = tar_bytes([TarEntry.file("hello", b"many tags\n")])
    pushed = push(registry, build_image(layout, [layer], tag="one"), f"{REPOSITORY}:{TAGS[0]}")
    put_manifest(registry, pushed, TAGS[1:])
    host, port = registry.host.rsplit(":", 1)
    with CountingProxy(host, int(port)) as proxy:
        yield Proxied(proxy, registry)


def wishlist_file(path: Path, refs: list[str]) -> Path:
    lines = "".join(f"  - '{ref}'\n" for ref in refs)
    path.write_text(f"version: 1\ninput:\n{lines}")
    return path


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["-q", *argv])
    return code, capsys.readouterr().out


def test_noop_convert_reuses_connections(
    proxied: Proxied, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before the fix every HEAD was closed unread and each image cost a connection."""
    refs = proxied.refs(TAGS)
    wishlist = wishlist_file(tmp_path / "w.yaml", refs)
    argv = ("convert", str(wishlist), "--repo", f"dir:{tmp_path / 'repo'}", "--json")
    code, out = run_cli(capsys, *argv, "--registry-concurrency", "2")
    assert code == EXIT_OK
    assert json.loads(out)["summary"]["added"] == len(refs)

    proxied.proxy.reset()
    code, out = run_cli(capsys, *argv, "--registry-concurrency", "2")
    assert code == EXIT_OK
    assert json.loads(out)["summary"]["unchanged"] == len(refs)
    assert proxied.proxy.chunks == len(refs)  # one HEAD each, nothing else
    # At most one connection per request in flight, whatever the number of images.
    assert 1 <= proxied.proxy.connections <= 2 < len(refs)


class InFlight(httpx.BaseTransport):
    """The real transport, holding every manifest HEAD a while and noting the most in flight."""

    def __init__(self, hold: float) -> None:
        self._inner = httpx.HTTPTransport()
        self._hold = hold
        self._lock = threading.Lock()
        self._now = 0
        self.most = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "HEAD":
            return self._inner.handle_request(request)
        with self._lock:
            self._now += 1
            self.most = max(self.most, self._now)
        try:
            time.sleep(self._hold)
            return self._inner.handle_request(request)
        finally:
            with self._lock:
                self._now -= 1

    def close(self) -> None:
        self._inner.close()


def test_images_of_one_registry_are_checked_concurrently_within_the_bound(
    proxied: Proxied, tmp_path: Path
) -> None:
    refs = [f"{proxied.registry.host}/{REPOSITORY}:{tag}" for tag in TAGS]
    wishlist = loads(wishlist_file(tmp_path / "w.yaml", refs).read_text())
    publisher = open_publisher(f"dir:{tmp_path / 'repo'}")
    transport = InFlight(hold=0.2)
    options = RegistryOptions(retries=0, timeout=10.0, max_concurrency=16)
    with RegistryClient(options, transport=transport) as client:
        report = convert_wishlist(
            wishlist,
            client=client,
            publisher=publisher,
            options=BatchOptions(registry_concurrency=3),
        )
    assert Counter(image.outcome for image in report.images) == {"added": len(refs)}
    assert [str(image.reference) for image in report.images] == refs  # in wish-list order
    assert 2 <= transport.most <= 3


def test_registry_concurrency_must_be_positive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wishlist = wishlist_file(tmp_path / "w.yaml", ["127.0.0.1:1/a/b:1"])
    code = main(["convert", str(wishlist), "--dry-run", "--registry-concurrency", "0"])
    assert code == EXIT_USAGE
    assert "--registry-concurrency" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="registry_concurrency"):
        BatchOptions(registry_concurrency=0)


class GhostTag(httpx.BaseTransport):
    """The real transport, but the tag list also names a tag that has no manifest."""

    def __init__(self, ghost: str) -> None:
        self._inner = httpx.HTTPTransport()
        self._ghost = ghost
        self.requests: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append((request.method, request.url.path))
        response = self._inner.handle_request(request)
        if not request.url.path.endswith("/tags/list"):
            return response
        response.read()
        document = json.loads(response.content)
        document["tags"].append(self._ghost)
        return httpx.Response(200, json=document)

    def close(self) -> None:
        self._inner.close()


def test_dry_run_of_a_wildcard_heads_every_matched_tag(
    proxied: Proxied,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    transports: list[GhostTag] = []

    def client(options: RegistryOptions) -> RegistryClient:
        transports.append(GhostTag("t99"))
        return RegistryClient(options, transport=transports[-1])

    monkeypatch.setattr(commands, "RegistryClient", client)
    wildcard = f"{proxied.registry.host}/{REPOSITORY}:t0*"
    wishlist = wishlist_file(tmp_path / "w.yaml", [wildcard])
    code, out = run_cli(capsys, "convert", str(wishlist), "--dry-run")
    assert code == EXIT_OK, out
    assert out.strip().endswith("10 tags")
    heads = sorted(path for method, path in transports[-1].requests if method == "HEAD")
    assert heads == [f"/v2/{REPOSITORY}/manifests/t0{i}" for i in range(10)]

    wishlist_file(tmp_path / "w.yaml", [f"{proxied.registry.host}/{REPOSITORY}:t*"])
    code, out = run_cli(capsys, "convert", str(wishlist), "--dry-run")
    assert code == EXIT_FAILURE, out
    assert "FAIL" in out and "1 of 13 tags fail" in out and "t99" in out
