#!/usr/bin/env bash
# Builds what a real node needs beside the control plane's own binaries (e2e/build.sh
# builds kubelet, kube-scheduler and kube-proxy): containerd and its runc shim, the CNI
# plugins, CoreDNS, metrics-server and the pause binary, from pinned upstream sources;
# runc and nft from pinned Debian packages; the runtime base's root filesystem from
# pinned Debian packages; and `imagebuild` (e2e/images), which builds and serves the
# images. Everything goes into one directory outside the clone, keyed by the pins and
# this script, so only the first build is slow. Prints that directory.
set -euo pipefail
e2e=$(cd "$(dirname "$0")" && pwd)
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0

CONTAINERD=v2.4.2
CNI_PLUGINS=v1.9.1
COREDNS=v1.14.7
METRICS_SERVER=v0.8.0
# Debian 12 packages, name=version sha256. The node's runc and nft:
NODE_DEBS=(
  "runc=1.1.5+ds1-1+deb12u1 a00351f8c0318de0b424ecf5cd0fdb69880a89f3511cae4f6fff7de3e57881c5"
  "nftables=1.0.6-2+deb12u2 966ff20ce58c17163a771c02ddbca264291408f94c512bd85dd18da0ebdbe88c"
  "libnftables1=1.0.6-2+deb12u2 3a8223f9bfba99d97bf25296ac83de307ab036e1df63e5965f88809266851947"
  "libnftnl11=1.2.4-2 9e619e1470a1915264e906020f3bfc046fd8458043b1342686d997b5078213af"
)
# The runtime base, as distroless/cc-debian12 is made: glibc, libgcc, libstdc++, libgomp,
# OpenSSL, CA certificates, tzdata, netbase and base-files.
BASE_DEBS=(
  "base-files=12.4+deb12u15 3eb1ea6d85488f488cc2a163b98ad640ef88cee4c79287cf14e361aaf6206f47"
  "netbase=6.4 29b23c48c0fe6f878e56c5ddc9f65d1c05d729360f3690a593a8c795031cd867"
  "tzdata=2026f-0+deb12u1 3254eb870c8a949518214805aee5e4276af7699988ea8b9a3a583cd0f1eab31c"
  "ca-certificates=20250419~deb12u2 b9f76b5271a7ac373fd5e7e1b5b826a71ddd702b42a0d104955ecb1acfffc94b"
  "libc6=2.36-9+deb12u14 ba4f88f73dbc3ae9055f3c20f4523bfdbaf1ad13ff95e258924f77d20b4fbedf"
  "libgcc-s1=12.2.0-14+deb12u1 3016e62cb4b7cd8038822870601f5ed131befe942774d0f745622cc77d8a88f7"
  "libgomp1=12.2.0-14+deb12u1 48fec46bda7f5b1638b9e959889bfbc20491247d402d120bb152687eb48143d7"
  "libstdc++6=12.2.0-14+deb12u1 5cd3171216d4ab0fc911cfe9c35509bf2dd8f47761c43b7f6a4296701551a24d"
  "libssl3=3.0.22-1~deb12u2 cb4784740daa9b3b0eaea2b444bbefa686794afbbf3d678d238c1fd9875f2efd"
)

home=${KUBESENTIMENT_HOME:-$HOME/.cache/kubesentiment}
key=$( (cat "$0" "$e2e"/images/*.go "$e2e/images/go.mod" "$e2e/images/go.sum"; go version) | sha256sum | cut -c1-16)
out=$home/node/$key
if [ -x "$out/bin/imagebuild" ]; then
  echo "$out"
  exit 0
fi
command -v go >/dev/null || { echo "build-node.sh: the Go toolchain is needed to build the node" >&2; exit 3; }
log() { printf 'build-node: %s\n' "$*" >&2; }
log "building the node's parts into $out (the first build takes several minutes)"
tmp=$out.tmp
rm -rf "$tmp" && mkdir -p "$tmp/bin/cni" "$tmp/debs"
goinstall() { local dir=$1; shift; GOBIN=$dir go install -trimpath -ldflags=-s "$@" >&2; }

log "containerd $CONTAINERD"
goinstall "$tmp/bin" -tags no_btrfs "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD" \
  "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD"
log "CNI plugins $CNI_PLUGINS"
goinstall "$tmp/bin/cni" "github.com/containernetworking/plugins/plugins/main/bridge@$CNI_PLUGINS" \
  "github.com/containernetworking/plugins/plugins/main/loopback@$CNI_PLUGINS" \
  "github.com/containernetworking/plugins/plugins/ipam/host-local@$CNI_PLUGINS" \
  "github.com/containernetworking/plugins/plugins/meta/portmap@$CNI_PLUGINS"
log "CoreDNS $COREDNS"
goinstall "$tmp/bin" "github.com/coredns/coredns@$COREDNS"
log "metrics-server $METRICS_SERVER"
goinstall "$tmp/bin" "sigs.k8s.io/metrics-server/cmd/metrics-server@$METRICS_SERVER"

log "pause, from the kubelet's own source"
kdir=$(cd "$e2e/controlplane" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)
pause=$(sed -n 's/^TAG ?= //p' "$kdir/build/pause/Makefile")
gcc -Os -Wall -Werror -static -DVERSION="v$pause" -o "$tmp/bin/pause" "$kdir/build/pause/linux/pause.c"

log "imagebuild"
(cd "$e2e/images" && go build -trimpath -ldflags=-s -o "$tmp/bin/imagebuild" .)

# fetch_debs DIR SPEC...: download each name=version, check its sha256, unpack into DIR.
fetch_debs() {
  local dir=$1; shift
  mkdir -p "$dir"
  local spec pkg sum deb
  for spec in "$@"; do
    pkg=${spec%% *} sum=${spec##* }
    (cd "$tmp/debs" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null)
    deb=$(ls "$tmp/debs/${pkg%%=*}_"*.deb)
    echo "$sum  $deb" | sha256sum -c --status || { log "sha256 mismatch for $pkg"; exit 1; }
    dpkg-deb -x "$deb" "$dir"
  done
}
log "runc and nft (Debian packages)"
fetch_debs "$tmp/debian" "${NODE_DEBS[@]}"
cp "$tmp/debian/usr/sbin/runc" "$tmp/bin/runc"
# nft runs from here with its own libraries; kube-proxy finds it first on PATH.
cat >"$tmp/bin/nft" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="$out/debian/usr/lib/x86_64-linux-gnu" exec "$out/debian/usr/sbin/nft" "\$@"
EOF
chmod +x "$tmp/bin/nft"

log "the runtime base's root filesystem (Debian packages)"
rootfs=$tmp/rootfs
fetch_debs "$rootfs" "${BASE_DEBS[@]}"
# As distroless: no docs, no maintainer scripts' leftovers; users root, nonroot, nobody.
rm -rf "$rootfs"/usr/share/{doc,man,info,lintian,locale} "$rootfs"/etc/{init.d,rc*.d,cron*}
mkdir -p "$rootfs"/{tmp,home/nonroot,root,etc/ssl/certs} && chmod 1777 "$rootfs/tmp" && chmod 700 "$rootfs/root"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
find "$rootfs/usr/share/ca-certificates" -name '*.crt' | sort | xargs cat >"$rootfs/etc/ssl/certs/ca-certificates.crt"
rm -rf "$tmp/debs"

rm -rf "$out" && mv "$tmp" "$out"
echo "$out"
