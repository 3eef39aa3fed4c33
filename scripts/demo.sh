#!/usr/bin/env bash
# A five-minute tour: start a throw-away registry on 127.0.0.1, push a small image to
# it, and look at it with unpacked. Nothing outside this machine is contacted (apart
# from apt and PyPI the first time, to install what is missing).
set -euo pipefail

# shellcheck source=scripts/_setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
cd "$REPO_ROOT"

WORK="$(mktemp -d -t unpacked-demo.XXXXXX)"
REGISTRY_PID=""

cleanup() {
    if [[ -n "$REGISTRY_PID" ]] && kill -0 "$REGISTRY_PID" 2>/dev/null; then
        kill "$REGISTRY_PID"
        # Bounded wait: docker-registry exits promptly on SIGTERM; kill it if not.
        for _ in $(seq 50); do
            kill -0 "$REGISTRY_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$REGISTRY_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT="$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
REGISTRY="127.0.0.1:$PORT"
IMAGE="$REGISTRY/demo/hello:1.0"

say "1/5  starting a registry (docker-registry) on $REGISTRY"
cat >"$WORK/registry.yml" <<YAML
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $WORK/storage
  delete:
    enabled: true
http:
  addr: $REGISTRY
  secret: unpacked-demo
YAML
/usr/bin/docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REGISTRY_PID=$!

say "2/5  building demo/hello:1.0 locally and pushing it with skopeo"
if ! .venv/bin/python scripts/seed_demo.py --registry "$REGISTRY" --workdir "$WORK"; then
    echo "--- registry log ($WORK/registry.log):" >&2
    tail -n 20 "$WORK/registry.log" >&2
    exit 1
fi

say "3/5  unpacked inspect $IMAGE"
.venv/bin/unpacked inspect "$IMAGE"

# The repository is kept after the demo (./demo/repo) so that it can be looked at.
REPO="$REPO_ROOT/demo/repo"
rm -rf "$REPO"  # the registry's port, hence the image's name, differs on every run
mkdir -p "$REPO_ROOT/demo"
say "4/5  unpacked convert-single-image $IMAGE --repo dir:$REPO"
.venv/bin/unpacked convert-single-image "$IMAGE" --repo "dir:$REPO"
say "     ... and once more: nothing changed, so it costs one HEAD request"
.venv/bin/unpacked convert-single-image "$IMAGE" --repo "dir:$REPO"

say "5/5  what the repository holds"
LINK="$REPO/$REGISTRY/demo/hello:1.0"
echo "public link:   $LINK -> $(readlink "$LINK")"
echo "its files:     $(cd "$LINK" && ls -A | tr '\n' ' ')"
echo "hello.sh:      $(head -n 2 "$LINK/hello.sh" | tail -n 1)"
echo "layers:        $(cd "$REPO" && ls -d .layers/*/*/layerfs | tr '\n' ' ')"
echo "metadata:      $(cd "$REPO" && find .metadata -type f | sort | tr '\n' ' ')"
.venv/bin/unpacked stats --repo "dir:$REPO"
.venv/bin/unpacked status --repo "dir:$REPO"

say "done: the registry is stopped and $WORK removed on exit; the repository stays in $REPO"
