#!/usr/bin/env bash
# Stops everything e2e/up.sh started and leaves no process behind.
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
rm -f "$state"/*.pid "$state/env"
echo "down" >&2
