#!/usr/bin/env bash
# The test suite (what .ci/run runs): install into .venv if needed, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# install.sh installs Ray: its tests must run here, so "Ray is not installed" is a failure, not a skip.
export CPT_REQUIRE_RAY=${CPT_REQUIRE_RAY:-1}
exec .venv/bin/python -m pytest "$@"
