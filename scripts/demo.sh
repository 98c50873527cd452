#!/usr/bin/env bash
# The main job on the bundled sample, on CPU, in a few minutes:
#   prep (filter, dedup, tokenize -> shards + manifest) -> check (quality gate + report) -> train
# with a tiny Qwen2-architecture model made from data/tiny-qwen2.json (no download).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
bin=.venv/bin
out=${DEMO_OUT:-demo_out}
[ -f "$out/tiny-qwen2/config.json" ] || $bin/python data/make_tiny_model.py "$out/tiny-qwen2" >/dev/null
$bin/cpt-prep build data/sample/train.txt data/sample/extra.jsonl.gz --eval data/sample/eval.txt \
    --tokenizer "$out/tiny-qwen2" --output "$out/shards" --overwrite
$bin/cpt-prep check "$out/shards/manifest.json" --report "$out/report"
$bin/cpt-train --manifest "$out/shards/manifest.json" --config data/demo_config.json \
    --model_name_or_path "$out/tiny-qwen2" --output_dir "$out/run" --overwrite_output_dir "$@"
echo "outputs: $out/shards (data set), $out/report/index.html (data report), $out/run (checkpoints, final_model, logs)"
