"""The harness itself: image builders, the three registries, the token issuer."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import stat
import subprocess
import tarfile
import time
from pathlib import Path

import httpx
import pytest
import zstandard

from support import registry as registry_module
from support.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    LAYER_MEDIA_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
    TarEntry,
    build_image,
    build_index,
    sha256,
    tar_bytes,
)
from support.registry import (
    HarnessError,
    RegistryServer,
    skopeo_copy,
    skopeo_inspect,
    start_registry,
)
from support.samples import SampleImages
from support.tokens import TokenIssuer

AWKWARD = [
    TarEntry.dir("etc", mode=0o755, mtime=5),
    TarEntry.file("etc/os-release", b"ID=test\n", uid=1000, gid=100, uname="u", gname="g"),
    TarEntry.file("bin/su", b"x", mode=0o4755),
    TarEntry.file("bin/sg", b"y", mode=0o2711),
    TarEntry.dir("tmp", mode=0o1777),
    TarEntry.file("locked", b"", mode=0o000),
    TarEntry.symlink("abs", "/etc/os-release"),
    TarEntry.symlink("dangling", "../nowhere"),
    TarEntry.hardlink("hard", "etc/os-release"),
    TarEntry.char("dev/null", 1, 3),
    TarEntry.block("dev/loop0", 7, 0),
    TarEntry.fifo("pipe"),
    TarEntry.file(b"caf\xe9", b"latin-1 name"),
    TarEntry.symlink("to-latin", b"caf\xe9"),
    TarEntry.file("/".join(["d" * 200] * 3) + "/long", b"long"),
    TarEntry.file("xattrs", b"", xattrs={"user.bin": b"\x00\xff\x01", "user.text": b"v"}),
    TarEntry.whiteout("gone/file"),
    TarEntry.opaque("opaque"),
]


def _members(data: bytes) -> dict[bytes, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), errors="surrogateescape") as tar:
        return {m.name.encode("utf-8", "surrogateescape"): m for m in tar.getmembers()}


def test_tar_bytes_writes_every_entry_kind_faithfully() -> None:
    data = tar_bytes(AWKWARD)
    assert data == tar_bytes(AWKWARD), "tar output must be deterministic"
    members = _members(data)
    assert len(members) == len(AWKWARD)
    assert members[b"etc"].isdir() and members[b"etc"].mtime == 5
    release = members[b"etc/os-release"]
    assert (release.uid, release.gid, release.uname, release.gname) == (1000, 100, "u", "g")
    assert stat.S_IMODE(members[b"bin/su"].mode) == 0o4755
    assert stat.S_IMODE(members[b"bin/sg"].mode) == 0o2711
    assert stat.S_IMODE(members[b"tmp"].mode) == 0o1777
    assert stat.S_IMODE(members[b"locked"].mode) == 0
    assert members[b"abs"].issym() and members[b"abs"].linkname == "/etc/os-release"
    assert members[b"hard"].islnk() and members[b"hard"].linkname == "etc/os-release"
    null = members[b"dev/null"]
    assert null.ischr() and (null.devmajor, null.devminor) == (1, 3)
    assert members[b"dev/loop0"].isblk()
    assert members[b"pipe"].isfifo()
    assert members[b"to-latin"].linkname.encode("utf-8", "surrogateescape") == b"caf\xe9"
    assert b"/".join([b"d" * 200] * 3) + b"/long" in members
    pax = members[b"xattrs"].pax_headers
    assert pax["SCHILY.xattr.user.bin"].encode("utf-8", "surrogateescape") == b"\x00\xff\x01"
    assert pax["SCHILY.xattr.user.text"] == "v"
    assert b"gone/.wh.file" in members and b"opaque/.wh..wh..opq" in members
    # The raw bytes of the non-UTF-8 name are in the archive, not a re-encoding.
    assert b"path=caf\xe9\n" in data


def test_build_image_writes_a_layout_umoci_unpacks(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    layers = [tar_bytes(AWKWARD), tar_bytes([TarEntry.file("etc/os-release", b"ID=two\n")])]
    image = build_image(layout, layers, tag="t", compression=["gzip", "none"])
    again = build_image(tmp_path / "again", layers, tag="t", compression=["gzip", "none"])
    assert image.manifest_digest == again.manifest_digest, "digests must be reproducible"
    assert image.diff_ids == (sha256(layers[0]), sha256(layers[1]))
    assert image.layer_digests[1] == image.diff_ids[1]
    assert gzip.decompress(image.blob(image.layer_digests[0])) == layers[0]
    assert image.layer_media_types == (LAYER_MEDIA_TYPES["gzip"], LAYER_MEDIA_TYPES["none"])
    assert image.config["rootfs"]["diff_ids"] == list(image.diff_ids)
    assert json.loads(image.manifest_bytes)["config"]["digest"] == image.config_digest
    rootfs = tmp_path / "rootfs"
    subprocess.run(
        ["umoci", "raw", "unpack", "--image", f"{layout}:t", str(rootfs)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert (rootfs / "etc/os-release").read_bytes() == b"ID=two\n"
    assert os.stat(rootfs / "bin/su").st_mode & stat.S_ISUID
    assert stat.S_ISCHR(os.lstat(rootfs / "dev/null").st_mode)
    assert os.readlink(rootfs / "abs") == "/etc/os-release"
    assert (rootfs / os.fsdecode(b"caf\xe9")).read_bytes() == b"latin-1 name"
    assert os.getxattr(rootfs / "xattrs", "user.bin") == b"\x00\xff\x01"


def test_build_image_zstd_and_config_overrides(tmp_path: Path) -> None:
    layer = tar_bytes([TarEntry.file("a", b"a" * 1000)])
    image = build_image(
        tmp_path,
        [layer],
        compression="zstd",
        platform="linux/arm64/v8",
        config={"Entrypoint": ["/a"], "Cmd": None, "Labels": {"x": "y"}},
    )
    assert image.layer_media_types == (LAYER_MEDIA_TYPES["zstd"],)
    blob = image.blob(image.layer_digests[0])
    assert zstandard.ZstdDecompressor().decompress(blob) == layer
    config = image.config
    assert (config["os"], config["architecture"], config["variant"]) == ("linux", "arm64", "v8")
    assert config["config"]["Entrypoint"] == ["/a"] and "Cmd" not in config["config"]
    assert config["config"]["Labels"] == {"x": "y"}
    with pytest.raises(ValueError, match="2 compressions for 1 layers"):
        build_image(tmp_path, [layer], compression=["gzip", "gzip"])


def test_build_index_lists_platforms_and_retags(tmp_path: Path) -> None:
    amd = build_image(tmp_path, [tar_bytes([TarEntry.file("a", b"1")])], tag="amd")
    arm = build_image(
        tmp_path, [tar_bytes([TarEntry.file("a", b"2")])], tag="arm", platform="linux/arm64/v8"
    )
    digest = build_index(tmp_path, [amd, arm], tag="multi")
    index = json.loads((tmp_path / "blobs" / "sha256" / digest.split(":")[1]).read_bytes())
    assert index["mediaType"] == OCI_INDEX
    assert [m["platform"] for m in index["manifests"]] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]
    build_image(tmp_path, [tar_bytes([TarEntry.file("a", b"3")])], tag="amd")
    top = json.loads((tmp_path / "index.json").read_bytes())
    names = [m["annotations"]["org.opencontainers.image.ref.name"] for m in top["manifests"]]
    assert sorted(names) == ["amd", "arm", "multi"], "re-tagging must replace, not duplicate"


# --- registries ---------------------------------------------------------------------


@pytest.fixture(params=["registry", "basic_registry", "token_registry"])
def any_registry(request: pytest.FixtureRequest) -> RegistryServer:
    server: RegistryServer = request.getfixturevalue(request.param)
    return server


def test_skopeo_inspect_through_each_registry(
    any_registry: RegistryServer, sample_images: SampleImages
) -> None:
    simple = sample_images.simple
    raw = skopeo_inspect(f"docker://{simple.ref(any_registry)}", creds=any_registry.creds, raw=True)
    assert raw == simple.manifest_bytes
    assert simple.built is not None
    assert sha256(raw) == simple.digest == simple.built.manifest_digest
    config = any_registry.blob_path(simple.config_digest or "")
    assert config.read_bytes() == simple.config_bytes
    info = json.loads(
        skopeo_inspect(f"docker://{simple.ref(any_registry)}", creds=any_registry.creds)
    )
    assert info["Layers"] == list(simple.built.layer_digests)


def test_samples_have_the_promised_shapes(sample_images: SampleImages) -> None:
    s = sample_images
    assert s.simple.media_type == OCI_MANIFEST and len(s.simple.layer_digests) == 2
    assert s.simple_docker.media_type == DOCKER_MANIFEST
    assert s.simple_docker.diff_ids == s.simple.diff_ids
    assert s.multi_oci.media_type == OCI_INDEX
    assert s.multi_docker.media_type == DOCKER_MANIFEST_LIST
    for multi in (s.multi_oci, s.multi_docker):
        assert multi.platforms == ("linux/amd64", "linux/arm64/v8")
        assert (
            multi.for_platform("linux/arm64/v8").digest != multi.for_platform("linux/amd64").digest
        )
    assert s.multi_docker.for_platform("linux/amd64").media_type == DOCKER_MANIFEST
    assert len(s.many_tags.tags) == 120


def test_many_tags_are_listed(registry: RegistryServer, sample_images: SampleImages) -> None:
    response = httpx.get(f"{registry.url}/v2/test/tags/tags/list", timeout=10)
    assert sorted(response.json()["tags"]) == list(sample_images.many_tags.tags)


def test_basic_registry_refuses_missing_and_wrong_credentials(
    basic_registry: RegistryServer, sample_images: SampleImages
) -> None:
    url = f"{basic_registry.url}/v2/test/simple/manifests/v1"
    assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, auth=("unpacked", "wrong"), timeout=10).status_code == 401
    ok = httpx.get(
        url,
        auth=(basic_registry.username or "", basic_registry.password or ""),
        headers={"Accept": OCI_MANIFEST},
        timeout=10,
    )
    assert ok.status_code == 200 and ok.content == sample_images.simple.manifest_bytes
    with pytest.raises(HarnessError, match=r"unauthorized: authentication required"):
        skopeo_inspect(f"docker://{sample_images.simple.ref(basic_registry)}", creds="unpacked:no")


def test_token_registry_anonymous_pull_only_under_public(
    token_registry: RegistryServer, token_issuer: TokenIssuer, sample_images: SampleImages
) -> None:
    token_issuer.reset()
    raw = skopeo_inspect(f"docker://{sample_images.public.ref(token_registry)}", raw=True)
    assert raw == sample_images.public.manifest_bytes
    assert token_issuer.count("repository:public/hello:pull") >= 1
    assert all(i.username is None for i in token_issuer.issued)
    with pytest.raises(HarnessError, match=r"denied: requested access to the resource is denied"):
        skopeo_inspect(f"docker://{sample_images.simple.ref(token_registry)}")
    denied = [i for i in token_issuer.issued if "repository:test/simple:pull" in i.scopes]
    assert denied and all(not a["actions"] for i in denied for a in i.access)


def test_token_registry_wrong_password_is_refused_by_the_issuer(
    token_registry: RegistryServer, token_issuer: TokenIssuer, sample_images: SampleImages
) -> None:
    token_issuer.reset()
    with pytest.raises(HarnessError, match=r"invalid username/password"):
        skopeo_inspect(f"docker://{sample_images.simple.ref(token_registry)}", creds="unpacked:no")
    assert token_issuer.refused >= 1 and token_issuer.count() == 0


def _token(issuer: TokenIssuer, scope: str, auth: tuple[str, str] | None = None) -> str:
    response = httpx.get(
        issuer.realm, params={"service": issuer.service, "scope": scope}, auth=auth, timeout=10
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token"] == body["access_token"]
    assert body["issued_at"].endswith("Z")
    return str(body["token"])


def test_registry_verifies_token_signature_and_expiry(
    token_registry: RegistryServer,
    token_issuer: TokenIssuer,
    sample_images: SampleImages,
    tmp_path: Path,
) -> None:
    scope = "repository:test/simple:pull"
    url = f"{token_registry.url}/v2/test/simple/manifests/v1"
    creds = (token_issuer.username, token_issuer.password)

    def get(token: str) -> int:
        headers = {"Authorization": f"Bearer {token}", "Accept": OCI_MANIFEST}
        return httpx.get(url, headers=headers, timeout=10).status_code

    token_issuer.reset()
    assert get(_token(token_issuer, scope, creds)) == 200
    assert token_issuer.count(scope) == 1
    payload = json.loads(base64.urlsafe_b64decode(_token(token_issuer, scope).split(".")[1] + "=="))
    assert payload["aud"] == token_issuer.service and payload["access"][0]["actions"] == []
    # Same issuer name and service, different key: the registry must refuse it.
    with TokenIssuer(workdir=tmp_path, service=token_issuer.service) as forger:
        assert get(_token(forger, scope, (forger.username, forger.password))) == 401
    with token_issuer.expiring_in(-120):
        expired = _token(token_issuer, scope, creds)
    assert token_issuer.expires_in == 300
    assert get(expired) == 401


def test_token_issuer_rejects_other_services(token_issuer: TokenIssuer) -> None:
    response = httpx.get(token_issuer.realm, params={"service": "other"}, timeout=10)
    assert response.status_code == 400


def test_skopeo_copy_reports_failures_with_stderr(registry: RegistryServer) -> None:
    with pytest.raises(HarnessError, match="manifest unknown"):
        skopeo_copy(f"docker://{registry.host}/test/absent:v1", "oci:/nonexistent:x")


def test_registry_start_failure_is_reported_with_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry_module, "REGISTRY_BIN", "/bin/false")
    started = time.monotonic()
    with pytest.raises(HarnessError, match="exited at start 2 times"):
        start_registry(tmp_path / "storage", workdir=tmp_path, attempts=2)
    assert time.monotonic() - started < 10


def test_registry_stops_and_releases_its_port(tmp_path: Path) -> None:
    with start_registry(tmp_path / "storage", workdir=tmp_path) as server:
        assert httpx.get(f"{server.url}/v2/", timeout=5).status_code == 200
    assert server.process.returncode is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/v2/", timeout=5)
