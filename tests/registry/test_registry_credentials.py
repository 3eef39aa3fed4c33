"""Credentials from docker config.json / containers auth.json: discovery, forms, errors."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import pytest

from unpacked.errors import ConfigError
from unpacked.reference import DOCKER_HUB
from unpacked.registry._credentials import (
    CredentialStore,
    discover_auth_file,
    load_credentials,
)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write(path: Path, document: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


def pair(store: CredentialStore, registry: str, repository: str = "") -> tuple[str, str] | None:
    found = store.lookup(registry, repository)
    return None if found is None else (found.username, found.password)


def test_entry_forms(tmp_path: Path) -> None:
    path = write(
        tmp_path / "config.json",
        {
            "auths": {
                "ghcr.io": {"auth": b64("gh:tok:en")},
                "https://quay.io": {"username": "q", "password": "p"},
                "http://insecure.lan:5000/v2/": {"auth": b64("i:j")},
                "https://index.docker.io/v1/": {"auth": b64("hub:pw")},
                "registry.lan/team": {"auth": b64("team:pw")},
                "registry.lan": {"auth": b64("all:pw")},
                "empty.io": {},
            }
        },
    )
    store = load_credentials(path)
    assert pair(store, "ghcr.io") == ("gh", "tok:en")  # the password may hold colons
    assert pair(store, "quay.io") == ("q", "p")
    assert pair(store, "insecure.lan:5000") == ("i", "j")
    assert pair(store, DOCKER_HUB, "library/ubuntu") == ("hub", "pw")
    assert pair(store, "registry-1.docker.io") == ("hub", "pw")
    assert pair(store, "registry.lan", "team/app") == ("team", "pw")
    assert pair(store, "registry.lan", "other/app") == ("all", "pw")
    assert pair(store, "empty.io") is None
    assert pair(store, "unknown.io") is None
    assert pair(store, "GHCR.IO") == ("gh", "tok:en")


def test_password_is_not_in_repr(tmp_path: Path) -> None:
    path = write(tmp_path / "config.json", {"auths": {"ghcr.io": {"auth": b64("u:Sesame42")}}})
    found = load_credentials(path).lookup("ghcr.io")
    assert found is not None
    assert "Sesame42" not in repr(found)
    assert str(path) in found.source


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ("not json", "not valid JSON"),
        ([], "expected a JSON object"),
        ({"auths": []}, "'auths' must be an object"),
        ({"auths": {"ghcr.io": "x"}}, "auths['ghcr.io']: expected an object"),
        ({"auths": {"ghcr.io": {"auth": "%%%"}}}, "auths['ghcr.io'].auth: not base64"),
        ({"auths": {"ghcr.io": {"auth": b64("nocolon")}}}, "no 'user:password' pair"),
        ({"auths": {"ghcr.io": {"auth": 5}}}, "auth: expected a string"),
        ({"auths": {"ghcr.io": {"username": "u", "password": 5}}}, "must be strings"),
    ],
)
def test_malformed_files_name_the_file_and_entry(
    tmp_path: Path, document: object, fragment: str
) -> None:
    path = tmp_path / "auth.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(ConfigError) as caught:
        load_credentials(path)
    assert str(path) in str(caught.value)
    assert fragment in str(caught.value)


def test_unreadable_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read registry auth file"):
        load_credentials(tmp_path / "missing.json")


def test_credential_helpers_are_named_in_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(
        tmp_path / "config.json",
        {
            "auths": {"https://index.docker.io/v1/": {}},
            "credsStore": "desktop",
            "credHelpers": {"gcr.io": "gcloud"},
        },
    )
    with caplog.at_level(logging.WARNING, logger="unpacked.registry._credentials"):
        store = load_credentials(path)
        load_credentials(path)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'desktop'" in warnings[0].getMessage()
    assert "'gcloud'" in warnings[0].getMessage()
    assert pair(store, DOCKER_HUB) is None


def test_discovery_order(tmp_path: Path) -> None:
    home = tmp_path / "home"
    runtime = tmp_path / "run"
    docker_config = tmp_path / "docker"
    explicit = write(tmp_path / "explicit.json", {})
    in_home = write(home / ".docker" / "config.json", {})
    in_runtime = write(runtime / "containers" / "auth.json", {})
    in_docker_config = write(docker_config / "config.json", {})
    env = {
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(runtime),
        "DOCKER_CONFIG": str(docker_config),
        "REGISTRY_AUTH_FILE": str(explicit),
    }
    assert discover_auth_file(env) == explicit
    env["REGISTRY_AUTH_FILE"] = str(tmp_path / "missing.json")
    assert discover_auth_file(env) == in_docker_config
    del env["DOCKER_CONFIG"]
    assert discover_auth_file(env) == in_runtime
    del env["XDG_RUNTIME_DIR"]
    assert discover_auth_file(env) == in_home
    assert discover_auth_file({"HOME": str(tmp_path / "nobody")}) is None
    assert load_credentials(None).lookup("ghcr.io") is None
