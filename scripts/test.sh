#!/usr/bin/env bash
# Install what the tests need (Debian packages, .venv), then lint, type-check and run
# the whole test suite. Extra arguments go to pytest, e.g. ./scripts/test.sh -k registry -x
set -euo pipefail

# shellcheck source=scripts/_setup.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
cd "$REPO_ROOT"

say "ruff check"
.venv/bin/ruff check src tests
say "ruff format --check"
.venv/bin/ruff format --check src tests
say "mypy --strict src"
.venv/bin/mypy src

say "pytest"
status=0
.venv/bin/pytest "$@" || status=$?
if [[ $status -eq 5 ]]; then
    echo "error: pytest collected no tests" >&2
fi
exit "$status"
