#!/usr/bin/env bash
# The whole test suite on a fresh machine: walks the user's path, builds .venv (the real vLLM CPU stack
# included, so the `real` tier runs instead of skipping), then runs pytest.
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not real"`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# A new user's path first: README's set-up command from a plain install, every subcommand,
# one request to each pool, and each Dockerfile's wheel with its entrypoint.
python3 scripts/user_path.py
scripts/real-env.sh .venv
.venv/bin/python -m pip install --disable-pip-version-check -q -e '.[test]' torch==2.13.0
# tests/test_k8s_manifests.py renders deploy/k8s with `kubectl kustomize`: it fails, never skips, without it.
command -v kubectl >/dev/null || { apt-get update -qq && apt-get install -y -qq kubernetes-client; }
# tests/test_dashboard.py drives Debian's chromium through Playwright (browser downloads are blocked).
command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
# The habits that keep the code as it is: formatted, linted, typed.
.venv/bin/ruff format --check .
.venv/bin/ruff check .
.venv/bin/mypy
# CI sets no marker filter: a missing real-vLLM stack must fail, not skip.
export PD_REQUIRE_REAL=1
exec .venv/bin/python -m pytest -q "$@"
