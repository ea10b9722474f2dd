#!/usr/bin/env bash
# Runs the inference benchmarks recorded in docs/BENCHMARKS.md: the default model and a
# DistilBERT-shaped model with random weights (fp32 and int8), generated here if missing.
#   scripts/bench.sh [OUT_DIR]      (JSON reports go to OUT_DIR, default target/bench)
set -euo pipefail
cd "$(dirname "$0")/.."
home=${KUBESENTIMENT_HOME:-$HOME/.cache/kubesentiment}
out=${1:-target/bench}
mkdir -p "$out"
bash scripts/setup.sh
cargo build --release --locked
bin=${CARGO_TARGET_DIR:-target}/release/inference-server
if [ ! -f "$home/models/bench/distilbert-random-int8/model.onnx" ]; then
  "$home/venv/bin/python" scripts/make_distilbert_onnx.py "$home/models/minilm-sentiment" "$home/models/bench" 2>/dev/null
fi
seconds=${BENCH_SECONDS:-5}
"$bin" bench --seconds "$seconds" --json "$out/minilm-sentiment.json"
# The DistilBERT-shaped models are 4x slower: they run on the UCI amazon sentences only.
for m in distilbert-random distilbert-random-int8; do
  "$bin" bench --model "$home/models/bench/$m" --seconds "$seconds" --rounds 2 \
    --data "$home/data/uci/amazon.json" --json "$out/$m.json"
done
