#!/usr/bin/env bash
# Builds the chart tooling from the Go module proxy, pinned: helm (lint, template,
# install) and promtool (checks the alert rules). Cached outside the clone, keyed by the
# versions, so only the first run builds (about 6 minutes on 2 cores). Prints the bin
# directory.
set -euo pipefail
HELM=helm.sh/helm/v3/cmd/helm@v3.22.0
PROMTOOL=github.com/prometheus/prometheus/cmd/promtool@v0.316.0
key=$(printf '%s\n' "$HELM" "$PROMTOOL" | sha256sum | cut -c1-16)
bin=${KUBESENTIMENT_HOME:-$HOME/.cache/kubesentiment}/tools/$key
if [ ! -x "$bin/helm" ] || [ ! -x "$bin/promtool" ]; then
  command -v go >/dev/null || { echo "tools.sh: the Go toolchain is needed to build helm and promtool" >&2; exit 3; }
  echo "tools.sh: building helm and promtool into $bin (first build takes several minutes)" >&2
  mkdir -p "$bin.tmp"
  for tool in "$HELM" "$PROMTOOL"; do
    GOBIN="$bin.tmp" CGO_ENABLED=0 go install -trimpath -ldflags=-s "$tool" >&2
  done
  rm -rf "$bin" && mv "$bin.tmp" "$bin"
fi
echo "$bin"
