#!/usr/bin/env bash
# Builds the chart tooling, pinned: helm v3 (lint, template, install) from the Go module
# proxy, and rulecheck (scripts/rulecheck: Prometheus's own rule-file parser, what
# `promtool check rules` runs, without promtool's 12-minute build of every service
# discovery SDK). Cached outside the clone, keyed by the versions and rulecheck's source,
# so only the first run builds (about 4 minutes on 2 cores). Prints the bin directory.
set -euo pipefail
src=$(cd "$(dirname "$0")/rulecheck" && pwd)
HELM=helm.sh/helm/v3/cmd/helm@v3.22.0
key=$( (echo "$HELM"; cat "$src/go.mod" "$src/go.sum" "$src/main.go") | sha256sum | cut -c1-16)
bin=${KUBESENTIMENT_HOME:-$HOME/.cache/kubesentiment}/tools/$key
if [ ! -x "$bin/helm" ] || [ ! -x "$bin/rulecheck" ]; then
  command -v go >/dev/null || { echo "tools.sh: the Go toolchain is needed to build helm and rulecheck" >&2; exit 3; }
  echo "tools.sh: building helm and rulecheck into $bin (first build takes a few minutes)" >&2
  mkdir -p "$bin.tmp"
  GOBIN="$bin.tmp" CGO_ENABLED=0 go install "$HELM" >&2
  (cd "$src" && CGO_ENABLED=0 go build -o "$bin.tmp/rulecheck" . >&2)
  rm -rf "$bin" && mv "$bin.tmp" "$bin"
fi
echo "$bin"
