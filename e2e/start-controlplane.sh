#!/usr/bin/env bash
# Starts the local control plane in the background and returns once its API server is
# ready. Everything goes under STATE: cluster/ (certificates, etcd, kubeconfig, logs),
# controlplane.log and controlplane.pid. e2e/down.sh (or a SIGTERM to that pid) stops it.
# Further arguments go to the launcher (--node … runs a node beside it).
#   e2e/start-controlplane.sh STATE [ARGS…]
set -euo pipefail
state=$1
shift
bin=$(bash "$(dirname "$0")/build.sh")
mkdir -p "$state"
echo "$bin" >"$state/controlplane-bin"
setsid "$bin/controlplane" --state "$state/cluster" "$@" </dev/null >"$state/controlplane.log" 2>&1 &
pid=$!
echo $pid >"$state/controlplane.pid"
for _ in $(seq 1 1200); do
  grep -q '^ready' "$state/controlplane.log" && exit 0
  kill -0 $pid 2>/dev/null || break
  sleep 0.1
done
echo "the control plane did not start; the end of $state/controlplane.log:" >&2
tail -20 "$state/controlplane.log" >&2
exit 1
