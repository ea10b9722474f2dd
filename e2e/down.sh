#!/usr/bin/env bash
# Stops everything e2e/up.sh started and leaves no process behind. After a --cluster run
# it also removes what the node added to the machine (the launcher does so when it stops;
# `controlplane cleanup` does it again in case the launcher was killed): the pods'
# processes, mounts, the bridge, nftables tables, cgroups and the node's state under
# /run and /var/lib.
set -uo pipefail
state=${KUBESENTIMENT_STATE:-$(cd "$(dirname "$0")" && pwd)/.state}
[ -d "$state" ] || exit 0
touch "$state/stopping"
# Supervisors first (so nothing is restarted), then their process groups.
for f in "$state"/*.supervisor.pid; do
  [ -f "$f" ] || continue
  pid=$(cat "$f"); kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
done
for f in "$state"/*.pid; do
  [ -f "$f" ] || continue
  case "$f" in *.supervisor.pid) continue ;; esac
  kill -TERM "$(cat "$f")" 2>/dev/null
done
# Give everything up to 20 s to exit cleanly, then kill what is left.
for _ in $(seq 1 100); do
  alive=0
  for f in "$state"/*.pid; do [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break
  sleep 0.2
done
for f in "$state"/*.pid; do
  [ -f "$f" ] || continue
  pid=$(cat "$f"); kill -KILL -- "-$pid" 2>/dev/null; kill -KILL "$pid" 2>/dev/null
done
if [ -f "$state/node-bin" ] && [ -x "$(cat "$state/controlplane-bin" 2>/dev/null)/controlplane" ]; then
  "$(cat "$state/controlplane-bin")/controlplane" cleanup --node-bin "$(cat "$state/node-bin")" || echo "down: the node's cleanup reported errors" >&2
fi
rm -f "$state"/*.pid "$state/env" "$state/node-bin"
echo "down" >&2
