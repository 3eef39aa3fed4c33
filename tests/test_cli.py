"""The command line, end to end against the real registries: `main(argv) -> int`."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.registry import RegistryServer
from support.samples import SampleImages
from unpacked import __version__
from unpacked.cli import (
    EXIT_AUTH,
    EXIT_INPUT,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REGISTRY,
    EXIT_USAGE,
    main,
)


def _inspect_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, object]:
    assert main(["inspect", "--json", *argv]) == EXIT_OK
    result: dict[str, object] = json.loads(capsys.readouterr().out)
    return result


def _auth_file(tmp_path: Path, server: RegistryServer) -> Path:
    token = base64.b64encode(f"{server.username}:{server.password}".encode()).decode()
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {server.host: {"auth": token}}}))
    return path


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == EXIT_OK
    assert capsys.readouterr().out.strip() == f"unpacked {__version__}"


def test_help_lists_commands_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "inspect" in out
    assert "exit codes" in out


def test_usage_error_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-command"]) == EXIT_USAGE
    assert "invalid choice" in capsys.readouterr().err


def test_console_script_runs() -> None:
    script = Path(sys.executable).with_name("unpacked")
    done = subprocess.run(
        [script, "--version"], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("unpacked ")


def test_inspect_manifest_text(
    registry: RegistryServer, sample_images: SampleImages, capsys: pytest.CaptureFixture[str]
) -> None:
    image = sample_images.simple
    assert main(["inspect", image.ref(registry)]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"Digest:      {image.digest}" in out
    assert f"Config:      {image.config_digest}" in out
    for digest in image.layer_digests:
        assert digest in out
    assert "Platforms:" not in out  # a plain manifest has no index


def test_inspect_manifest_json(
    registry: RegistryServer, sample_images: SampleImages, capsys: pytest.CaptureFixture[str]
) -> None:
    image = sample_images.simple_docker
    result = _inspect_json(capsys, image.ref(registry))
    assert result["digest"] == image.digest
    assert result["mediaType"] == image.media_type
    assert result["config"] == {
        "digest": image.config_digest,
        "created": result["config"]["created"],
    }  # type: ignore[index]
    assert [layer["digest"] for layer in result["layers"]] == list(image.layer_digests)  # type: ignore[attr-defined]
    assert [layer["size"] for layer in result["layers"]] == list(image.layer_sizes)  # type: ignore[attr-defined]
    assert result["platforms"] == []


@pytest.mark.parametrize("which", ["multi_oci", "multi_docker"])
@pytest.mark.parametrize("platform", ["linux/amd64", "linux/arm64"])
def test_inspect_index_selects_platform(
    registry: RegistryServer,
    sample_images: SampleImages,
    capsys: pytest.CaptureFixture[str],
    which: str,
    platform: str,
) -> None:
    index = getattr(sample_images, which)
    result = _inspect_json(capsys, index.ref(registry), "--platform", platform)
    assert result["digest"] == index.digest
    assert result["mediaType"] == index.media_type
    assert sorted(result["platforms"]) == sorted(index.platforms)  # type: ignore[arg-type]
    chosen = index.for_platform("linux/arm64/v8" if platform == "linux/arm64" else platform)
    assert result["manifest"]["digest"] == chosen.digest  # type: ignore[index]
    assert result["config"]["digest"] == chosen.config_digest  # type: ignore[index]


def test_inspect_unknown_platform_is_not_found(
    registry: RegistryServer, sample_images: SampleImages, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = sample_images.multi_oci.ref(registry)
    assert main(["inspect", ref, "--platform", "linux/s390x"]) == EXIT_NOT_FOUND
    err = capsys.readouterr().err
    assert "linux/s390x" in err
    assert "linux/arm64/v8" in err  # says what is available


def test_inspect_basic_auth_with_auth_file(
    basic_registry: RegistryServer,
    sample_images: SampleImages,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    image = sample_images.simple
    ref = image.ref(basic_registry)
    missing = tmp_path / "none.json"
    assert main(["inspect", ref, "--auth-file", str(missing)]) == EXIT_INPUT
    assert str(missing) in capsys.readouterr().err
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    assert main(["inspect", ref, "--auth-file", str(empty)]) == EXIT_AUTH
    capsys.readouterr()
    auth = _auth_file(tmp_path, basic_registry)
    result = _inspect_json(capsys, ref, "--auth-file", str(auth))
    assert result["digest"] == image.digest


def test_inspect_token_auth(
    token_registry: RegistryServer,
    sample_images: SampleImages,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    public = sample_images.public
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(empty))
    assert _inspect_json(capsys, public.ref(token_registry))["digest"] == public.digest
    private = sample_images.multi_docker
    assert main(["inspect", private.ref(token_registry)]) == EXIT_AUTH
    capsys.readouterr()
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(_auth_file(tmp_path, token_registry)))
    assert _inspect_json(capsys, private.ref(token_registry))["digest"] == private.digest


def test_inspect_by_digest(
    registry: RegistryServer, sample_images: SampleImages, capsys: pytest.CaptureFixture[str]
) -> None:
    image = sample_images.simple
    result = _inspect_json(capsys, image.digest_ref(registry))
    assert result["digest"] == image.digest


def test_inspect_missing_tag(
    registry: RegistryServer, sample_images: SampleImages, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = sample_images.simple.ref(registry, tag="no-such-tag")
    assert main(["inspect", ref]) == EXIT_NOT_FOUND
    assert "no-such-tag" in capsys.readouterr().err


def test_inspect_bad_reference(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "Ubuntu:22.04"]) == EXIT_INPUT
    err = capsys.readouterr().err
    assert "Ubuntu:22.04" in err
    assert "lowercase" in err


def test_inspect_bad_platform(registry: RegistryServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", f"{registry.host}/x:y", "--platform", "amd64"]) == EXIT_INPUT
    assert "amd64" in capsys.readouterr().err


def test_inspect_unreachable_registry(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    argv = ["inspect", "127.0.0.1:9/x:y", "--timeout", "2"]
    assert main(argv) == EXIT_REGISTRY
    assert "127.0.0.1:9" in capsys.readouterr().err
