# shellcheck shell=bash
# Sourced by scripts/demo.sh and scripts/test.sh: make sure the system tools and the
# virtualenv (.venv, with this package and its test dependencies) are in place.
# Works on Debian 12 as root or with sudo; touches apt only when something is missing.

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO_ROOT/.venv"

# Debian packages and, for each, a file that proves it is installed.
APT_PACKAGES=(
    "docker-registry:/usr/bin/docker-registry"
    "skopeo:/usr/bin/skopeo"
    "umoci:/usr/bin/umoci"
    "crun:/usr/bin/crun"
    "apache2-utils:/usr/bin/htpasswd"
    "python3-venv:/usr/share/doc/python3-venv"
    "python3-pip:/usr/bin/pip3"
    "openssl:/usr/bin/openssl"
    "ca-certificates:/etc/ssl/certs/ca-certificates.crt"
    "time:/usr/bin/time"
)

say() {
    if [[ -t 2 ]]; then
        printf '\033[1m==> %s\033[0m\n' "$*" >&2
    else
        printf '==> %s\n' "$*" >&2
    fi
}

as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        echo "error: need root or sudo to run: $*" >&2
        return 1
    fi
}

install_system_packages() {
    local missing=() entry
    for entry in "${APT_PACKAGES[@]}"; do
        [[ -e "${entry#*:}" ]] || missing+=("${entry%%:*}")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        return 0
    fi
    if ! command -v apt-get >/dev/null; then
        echo "error: missing ${missing[*]} and no apt-get to install them" >&2
        return 1
    fi
    local had_registry_service=0
    [[ -e /usr/bin/docker-registry ]] && had_registry_service=1
    say "installing Debian packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${missing[@]}"
    # Debian's docker-registry package starts an open registry on port 5000 of every
    # interface; the demo and the tests start their own on 127.0.0.1 and need none.
    if [[ $had_registry_service -eq 0 ]] && command -v systemctl >/dev/null \
        && systemctl is-active --quiet docker-registry 2>/dev/null; then
        say "stopping the docker-registry service the package started (not needed here)"
        as_root systemctl disable --now docker-registry || true
    fi
}

check_python() {
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "error: python3 >= 3.11 is required, found $(python3 --version 2>&1)" >&2
        return 1
    }
}

setup_venv() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        check_python
        say "creating virtualenv $VENV"
        python3 -m venv "$VENV"
    fi
    # Reinstall only when the dependencies may have changed since the last install.
    local stamp="$VENV/.unpacked-installed" want
    want="$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1)"
    if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]] \
        || ! "$VENV/bin/python" -c 'import unpacked' 2>/dev/null; then
        say "installing unpacked and its test dependencies into $VENV"
        PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
            "$VENV/bin/python" -m pip install -q -e "$REPO_ROOT[test]"
        echo "$want" >"$stamp"
    fi
}

install_system_packages
setup_venv
