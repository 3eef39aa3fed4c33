"""Pure models: media types, platforms, and parsing manifests, indexes and image configs."""

from __future__ import annotations

import json
from typing import Any

import pytest

from unpacked import mediatype
from unpacked.digest import Digest
from unpacked.errors import ConfigError, NotFoundError, RegistryProtocolError
from unpacked.manifest import (
    Descriptor,
    Index,
    Manifest,
    parse_image_config,
    parse_index,
    parse_manifest,
    parse_manifest_or_index,
)
from unpacked.platform import DEFAULT, Platform

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64

# --- media types ------------------------------------------------------------------------


def test_layer_compression() -> None:
    assert mediatype.layer_compression(mediatype.DOCKER_LAYER) is mediatype.Compression.GZIP
    assert mediatype.layer_compression(mediatype.OCI_LAYER_ZSTD) is mediatype.Compression.ZSTD
    assert mediatype.layer_compression(mediatype.OCI_LAYER) is mediatype.Compression.NONE
    assert mediatype.layer_compression(mediatype.OCI_CONFIG) is None
    assert mediatype.FOREIGN_LAYER_TYPES <= mediatype.LAYER_TYPES
    assert not mediatype.MANIFEST_TYPES & mediatype.INDEX_TYPES
    assert set(mediatype.ACCEPT) == mediatype.MANIFEST_TYPES | mediatype.INDEX_TYPES


def test_essence() -> None:
    assert mediatype.essence("Application/JSON; charset=utf-8") == "application/json"


# --- platforms --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/x86_64", Platform("linux", "amd64")),
        ("linux/aarch64", Platform("linux", "arm64", "v8")),
        ("linux/arm64", Platform("linux", "arm64", "v8")),
        ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
        ("linux/arm/7", Platform("linux", "arm", "v7")),
        ("Linux/AMD64", Platform("linux", "amd64")),
        ("linux/ppc64le", Platform("linux", "ppc64le")),
        ("windows/amd64", Platform("windows", "amd64")),
    ],
)
def test_platform_parse_normalises(text: str, expected: Platform) -> None:
    assert Platform.parse(text) == expected


def test_platform_construction_normalises_too() -> None:
    assert Platform("linux", "arm64") == Platform("linux", "aarch64", "8")
    assert str(Platform("linux", "arm64")) == "linux/arm64/v8"
    assert str(DEFAULT) == "linux/amd64"
    assert hash(Platform("linux", "x86_64")) == hash(DEFAULT)


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "linux/amd64/v8/x", "linux/a md64"])
def test_platform_parse_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="invalid platform"):
        Platform.parse(text)


def test_platform_matches() -> None:
    assert DEFAULT.matches(Platform("linux", "amd64", "v3"))
    assert Platform.parse("linux/arm/v7").matches(Platform("linux", "arm"))
    assert not Platform.parse("linux/arm/v7").matches(Platform("linux", "arm", "v6"))
    assert not DEFAULT.matches(Platform("linux", "arm64"))
    assert not DEFAULT.matches(Platform("windows", "amd64"))


# --- manifests --------------------------------------------------------------------------


def manifest_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": mediatype.OCI_MANIFEST,
        "config": {"mediaType": mediatype.OCI_CONFIG, "digest": D1, "size": 100},
        "layers": [
            {"mediaType": mediatype.OCI_LAYER_GZIP, "digest": D2, "size": 2000},
            {
                "mediaType": mediatype.OCI_LAYER_NONDISTRIBUTABLE_GZIP,
                "digest": D3,
                "size": 0,
                "urls": ["https://example.invalid/layer"],
                "annotations": {"a": "b"},
            },
        ],
        "annotations": {"org.opencontainers.image.created": "2024-01-01"},
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


def raw(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def test_parse_manifest() -> None:
    parsed = parse_manifest(raw(manifest_doc()), mediatype.OCI_MANIFEST)
    assert parsed.media_type == mediatype.OCI_MANIFEST
    assert parsed.config == Descriptor(mediatype.OCI_CONFIG, Digest.parse(D1), 100)
    assert [layer.digest for layer in parsed.layers] == [Digest.parse(D2), Digest.parse(D3)]
    assert parsed.layers[1].urls == ("https://example.invalid/layer",)
    assert parsed.layers[1].annotations == {"a": "b"}
    assert parsed.annotations["org.opencontainers.image.created"] == "2024-01-01"
    assert parsed.layers[1].as_json()["urls"] == ["https://example.invalid/layer"]


def test_media_type_comes_from_the_document_or_its_shape() -> None:
    generic = parse_manifest_or_index(raw(manifest_doc()), "application/json")
    assert generic.media_type == mediatype.OCI_MANIFEST
    old_oci = parse_manifest_or_index(raw(manifest_doc(mediaType=None)), None)
    assert isinstance(old_oci, Manifest) and old_oci.media_type == mediatype.OCI_MANIFEST
    index = parse_manifest_or_index(raw({"schemaVersion": 2, "manifests": []}), "text/plain")
    assert isinstance(index, Index) and index.media_type == mediatype.OCI_INDEX
    docker = manifest_doc(mediaType=None)
    served = parse_manifest_or_index(raw(docker), mediatype.DOCKER_MANIFEST + "; charset=utf-8")
    assert served.media_type == mediatype.DOCKER_MANIFEST


@pytest.mark.parametrize(
    ("doc", "content_type", "fragment"),
    [
        (manifest_doc(schemaVersion=1), None, "schema 1"),
        (manifest_doc(), mediatype.DOCKER_MANIFEST_SCHEMA1_SIGNED, "schema 1"),
        (manifest_doc(schemaVersion=3), None, "schemaVersion: expected 2"),
        (manifest_doc(schemaVersion=True), None, "schemaVersion: expected 2"),
        (manifest_doc(schemaVersion=None), None, "schemaVersion: expected 2"),
        (manifest_doc(), mediatype.DOCKER_MANIFEST, "served as"),
        (manifest_doc(mediaType="application/vnd.cncf.helm.chart"), None, "not an image manifest"),
        (manifest_doc(config=None), None, "config: missing"),
        (manifest_doc(layers=None), None, "layers: missing"),
        (manifest_doc(layers={}), None, "layers: expected a list"),
        (manifest_doc(layers=["x"]), None, "layers[0]: expected a JSON object"),
        (
            manifest_doc(
                config={"mediaType": mediatype.OCI_CONFIG, "digest": "sha256:abc", "size": 1}
            ),
            None,
            "config.digest",
        ),
        (
            manifest_doc(
                config={"mediaType": mediatype.OCI_CONFIG, "digest": "md5:" + "0" * 32, "size": 1}
            ),
            None,
            "unsupported digest algorithm",
        ),
        (
            manifest_doc(config={"mediaType": mediatype.OCI_CONFIG, "digest": D1, "size": -1}),
            None,
            "config.size: expected a non-negative integer",
        ),
        (
            manifest_doc(config={"mediaType": mediatype.OCI_CONFIG, "digest": D1, "size": 1.5}),
            None,
            "config.size",
        ),
        (
            manifest_doc(config={"mediaType": mediatype.OCI_CONFIG, "digest": D1, "size": "1"}),
            None,
            "config.size",
        ),
        (manifest_doc(config={"digest": D1, "size": 1}), None, "config.mediaType: missing"),
        (
            manifest_doc(layers=[{"mediaType": "x", "digest": D1, "size": 1, "urls": "u"}]),
            None,
            "layers[0].urls: expected a list of strings",
        ),
        ({"schemaVersion": 2}, None, "neither a manifest nor an index"),
    ],
)
def test_bad_manifests_are_rejected(
    doc: dict[str, Any], content_type: str | None, fragment: str
) -> None:
    with pytest.raises(RegistryProtocolError) as caught:
        parse_manifest_or_index(raw(doc), content_type, what="manifest of image t/x:1")
    assert fragment in str(caught.value)
    assert str(caught.value).startswith("manifest of image t/x:1: ")


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b"\xff\xfe\x00", b"[" * 100000])
def test_non_json_is_rejected(body: bytes) -> None:
    with pytest.raises(RegistryProtocolError):
        parse_manifest_or_index(body, None)


def test_kind_mismatch() -> None:
    with pytest.raises(RegistryProtocolError, match="expected an image index"):
        parse_index(raw(manifest_doc()))
    with pytest.raises(RegistryProtocolError, match="expected an image manifest"):
        parse_manifest(raw({"schemaVersion": 2, "manifests": []}))


# --- index selection --------------------------------------------------------------------


def entry(
    digest: str, platform: dict[str, str] | None, media_type: str = mediatype.OCI_MANIFEST
) -> dict[str, Any]:
    out: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": 10}
    if platform is not None:
        out["platform"] = platform
    return out


def index_of(*entries: dict[str, Any]) -> Index:
    return parse_index(
        raw({"schemaVersion": 2, "mediaType": mediatype.OCI_INDEX, "manifests": list(entries)})
    )


def test_select_by_platform() -> None:
    index = index_of(
        entry(D1, {"os": "linux", "architecture": "amd64"}),
        entry(D2, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
        entry(D3, {"os": "unknown", "architecture": "unknown"}),  # an attestation
    )
    assert str(index.select(DEFAULT).digest) == D1
    assert str(index.select(Platform.parse("linux/arm64")).digest) == D2
    assert str(index.select(Platform.parse("linux/aarch64")).digest) == D2
    assert index.platforms() == (DEFAULT, Platform("linux", "arm64", "v8"))


def test_arm64_without_variant_in_the_index_matches_arm64_v8() -> None:
    index = index_of(entry(D2, {"os": "linux", "architecture": "arm64"}))
    assert str(index.select(Platform.parse("linux/arm64/v8")).digest) == D2


def test_select_prefers_exact_then_lowest_variant() -> None:
    index = index_of(
        entry(D3, {"os": "linux", "architecture": "amd64", "variant": "v3"}),
        entry(D2, {"os": "linux", "architecture": "amd64", "variant": "v2"}),
    )
    assert str(index.select(DEFAULT).digest) == D2
    assert str(index.select(Platform.parse("linux/amd64/v3")).digest) == D3
    exact = index_of(
        entry(D3, {"os": "linux", "architecture": "amd64", "variant": "v3"}),
        entry(D1, {"os": "linux", "architecture": "amd64"}),
    )
    assert str(exact.select(DEFAULT).digest) == D1


def test_select_skips_nested_indexes_and_entries_without_platform() -> None:
    index = index_of(
        entry(D1, {"os": "linux", "architecture": "amd64"}, mediatype.OCI_INDEX),
        entry(D2, None),
    )
    with pytest.raises(NotFoundError):
        index.select(DEFAULT)


def test_missing_platform_lists_what_is_available() -> None:
    index = index_of(
        entry(D1, {"os": "linux", "architecture": "amd64"}),
        entry(D2, {"os": "linux", "architecture": "arm64", "variant": "v8"}),
    )
    with pytest.raises(NotFoundError) as caught:
        index.select(Platform.parse("linux/s390x"), what="image test/multi:oci")
    assert str(caught.value) == (
        "image test/multi:oci has no image for platform linux/s390x "
        "(available: linux/amd64, linux/arm64/v8)"
    )


def test_platform_entry_needs_os_and_architecture() -> None:
    with pytest.raises(RegistryProtocolError, match=r"manifests\[0\].platform.architecture"):
        index_of(entry(D1, {"os": "linux"}))


# --- image configs ----------------------------------------------------------------------


def config_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "architecture": "arm64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/bin", "A=b=c"],
            "Entrypoint": ["/entry.sh"],
            "Cmd": None,
            "WorkingDir": "/work",
            "Labels": {"l": "v"},
            "User": "1000:1000",
            "ExposedPorts": {"80/tcp": {}},
            "Volumes": {"/data": {}},
            "StopSignal": "SIGTERM",
        },
        "rootfs": {"type": "layers", "diff_ids": [D1, D2]},
        "history": [
            {"created": "2024-01-01T00:00:00Z", "created_by": "ADD x /"},
            {"created_by": "ENV A=b", "empty_layer": True},
        ],
    }
    doc.update(changes)
    return doc


def test_parse_image_config() -> None:
    config = parse_image_config(raw(config_doc()))
    assert config.platform == Platform("linux", "arm64", "v8")
    assert config.diff_ids == (Digest.parse(D1), Digest.parse(D2))
    assert config.env == ("PATH=/usr/bin", "A=b=c")
    assert config.entrypoint == ("/entry.sh",)
    assert config.cmd is None
    assert config.working_dir == "/work"
    assert config.labels == {"l": "v"}
    assert config.user == "1000:1000"
    assert config.exposed_ports == ("80/tcp",)
    assert config.volumes == ("/data",)
    assert config.stop_signal == "SIGTERM"
    assert config.history[1].empty_layer and not config.history[0].empty_layer


def test_config_command_forms() -> None:
    as_string = parse_image_config(raw(config_doc(config={"Cmd": "/bin/sh -c x"})))
    assert as_string.cmd == ("/bin/sh -c x",)
    assert as_string.entrypoint is None
    reset = parse_image_config(raw(config_doc(config={"Entrypoint": []})))
    assert reset.entrypoint == ()
    bare = parse_image_config(raw(config_doc(config=None)))
    assert bare.env == () and bare.cmd is None and bare.labels == {}


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"rootfs": None}, "rootfs: missing"),
        ({"rootfs": {"type": "other", "diff_ids": []}}, "rootfs.type: expected 'layers'"),
        ({"rootfs": {"type": "layers", "diff_ids": ["sha256:x"]}}, "rootfs.diff_ids[0]"),
        ({"architecture": None}, "architecture: missing"),
        ({"os": 3}, "os: expected a string"),
        ({"config": {"Env": "A=b"}}, "config.Env: expected a list of strings"),
        ({"config": {"Labels": {"a": 1}}}, "config.Labels: expected an object of strings"),
        ({"history": [{"empty_layer": "yes"}]}, "history[0].empty_layer"),
    ],
)
def test_bad_configs_are_rejected(changes: dict[str, Any], fragment: str) -> None:
    with pytest.raises(RegistryProtocolError) as caught:
        parse_image_config(raw(config_doc(**changes)), what="config of t/x:1")
    assert fragment in str(caught.value)
