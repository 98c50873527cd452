#!/usr/bin/env bash
# Create .venv (once) and install the toolkit with its test extras and Ray (cpt-prep build --executor ray).
# torch is pinned to the CPU wheel these machines carry; on a GPU machine set TORCH_SPEC, e.g.
# TORCH_SPEC="torch==2.13.0" with your CUDA index, and `pip install -e '.[flash]'` for flash-attn.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
say() { echo "install: $*" >&2; }
[ -x .venv/bin/python ] || { say "[1/4] creating .venv with $PYTHON"; "$PYTHON" -m venv .venv; }
stamp=".venv/.cpt-installed"
want="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16) $TORCH_SPEC"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    # pip's own lines (Collecting / Downloading / Installing) are the progress; "already satisfied" is not.
    quiet() { grep -v -e "is ignored" -e "already satisfied" >&2 || true; }
    say "[2/4] $TORCH_SPEC"
    .venv/bin/pip install --disable-pip-version-check "$TORCH_SPEC" 2>&1 | quiet
    say "[3/4] the toolkit (editable) with its dev and ray extras"
    .venv/bin/pip install --disable-pip-version-check -e '.[dev,ray]' 2>&1 | quiet
    say "[4/4] checking the imports"
    .venv/bin/python -c "import torch, transformers, accelerate, datasets, datasketch, pyarrow, ray, tiktoken"
    echo "$want" > "$stamp"
    say "done: .venv is ready"
fi
