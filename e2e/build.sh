#!/usr/bin/env bash
# Builds the local cluster's Kubernetes binaries: our `controlplane` launcher plus the
# upstream kube-apiserver, kube-controller-manager, kubectl, and the node's kubelet,
# kube-scheduler and kube-proxy, from the modules pinned in e2e/controlplane/go.mod. The
# binaries are cached outside the clone, keyed by the pins and the launcher's source, so
# only the first build is slow. Prints the bin directory.
set -euo pipefail
src=$(cd "$(dirname "$0")/controlplane" && pwd)
key=$(cat "$src/go.mod" "$src/go.sum" "$src"/*.go "$0" | sha256sum | cut -c1-16)
bin=${KUBESENTIMENT_HOME:-$HOME/.cache/kubesentiment}/controlplane/$key
if [ ! -x "$bin/kubectl" ]; then
  command -v go >/dev/null || { echo "build.sh: the Go toolchain is needed to build the control plane" >&2; exit 3; }
  echo "build.sh: building the control plane into $bin (first build takes several minutes)" >&2
  mkdir -p "$bin.tmp"
  (
    cd "$src"
    export CGO_ENABLED=0
    # Stamp the release into the binaries, as the upstream build does.
    version=$(awk '$1 == "k8s.io/kubernetes" { print $2 }' go.mod)
    minor=$(echo "$version" | cut -d. -f2)
    stamp="-s"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      stamp="$stamp -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
    done
    go build -trimpath -ldflags=-s -o "$bin.tmp/controlplane" .
    for tool in kube-apiserver kube-controller-manager kubectl kubelet kube-scheduler kube-proxy; do
      go build -trimpath -ldflags="$stamp" -o "$bin.tmp/$tool" "k8s.io/kubernetes/cmd/$tool"
    done
  )
  rm -rf "$bin" && mv "$bin.tmp" "$bin"
fi
echo "$bin"
