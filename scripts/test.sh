#!/usr/bin/env bash
# The README's test command. It installs everything the tests need (model assets, the
# Kubernetes binaries, the node's parts, helm and rulecheck), then runs two lanes:
#   1. every test against one fast control plane without a node (host processes);
#   2. the README's run command as written (e2e/demo.sh: a real node, the chart installed
#      from images built here, the brief's batch in pods), the cluster tests against it,
#      and e2e/down.sh, checked to leave the machine as it was.
# Builds go outside the clone (~/.cache/kubesentiment), so later runs reuse them.
set -euo pipefail
cd "$(dirname "$0")/.."
home=${KUBESENTIMENT_HOME:-$HOME/.cache/kubesentiment}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$home/target}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
lap() { printf 'test.sh: %s after %d s\n' "$*" "$SECONDS" >&2; }

bash scripts/setup.sh
cargo fmt --all --check
bin=$(bash e2e/build.sh)
bash e2e/build-node.sh >/dev/null
# helm and rulecheck (Prometheus rule files) for the chart's tests.
export KUBESENTIMENT_TOOLS; KUBESENTIMENT_TOOLS=$(bash scripts/tools.sh)
lap "tools built"
cargo build --workspace --release --locked
cargo clippy --workspace --all-targets --release --locked -- -D warnings
# The debug profile too: a lint can hang on cfg(debug_assertions), and developers run this.
cargo clippy --workspace --all-targets --locked -- -D warnings
lap "workspace built"

# Lane 1: one control plane for every test binary; the harness fails rather than skips.
state=$(mktemp -d)
stop() {
  local pid; pid=$(cat "$state/controlplane.pid" 2>/dev/null) || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -rf "$state"
}
trap stop EXIT
bash e2e/start-controlplane.sh "$state"
# --release reuses the build above instead of compiling everything again for tests.
(export KUBECONFIG=$state/cluster/kubeconfig KUBECTL=$bin/kubectl KUBESENTIMENT_REQUIRE_CLUSTER=1 && cargo test --workspace --release --locked)
stop
lap "lane 1 (host processes) passed"

# Lane 2: the README's run command, then the cluster tests, then down.
export KUBESENTIMENT_IP_FORWARD_WAS; KUBESENTIMENT_IP_FORWARD_WAS=$(cat /proc/sys/net/ipv4/ip_forward)
trap 'bash e2e/down.sh' EXIT
bash e2e/demo.sh
lap "the run command brought the system up"
(source e2e/.state/env && KUBESENTIMENT_REQUIRE_NODE=1 cargo test --release --locked -p kubesentiment-tests --test cluster -- --test-threads=1)
trap - EXIT
bash e2e/down.sh
bash e2e/check-clean.sh
lap "lane 2 (a real node) passed"
