#!/usr/bin/env bash
# Create .venv (once) and install the toolkit with its test extras and Ray (cpt-prep build --executor ray).
# torch is pinned to the CPU wheel these machines carry; on a GPU machine set TORCH_SPEC, e.g.
# TORCH_SPEC="torch==2.13.0" with your CUDA index, and `pip install -e '.[flash]'` for flash-attn.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=".venv/.cpt-installed"
want="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16) $TORCH_SPEC"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/pip install -q --disable-pip-version-check "$TORCH_SPEC" 2>&1 | grep -v "is ignored" || true
    .venv/bin/pip install -q --disable-pip-version-check -e '.[dev,ray]' 2>&1 | grep -v "is ignored" || true
    .venv/bin/python -c "import torch, transformers, accelerate, datasets, datasketch, pyarrow, ray"
    echo "$want" > "$stamp"
fi
