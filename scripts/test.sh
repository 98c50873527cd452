#!/usr/bin/env bash
# The test suite (what .ci/run runs): install into .venv if needed, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest "$@"
