#!/usr/bin/env bash
# The README's test command: installs everything the tests need (model assets, the
# local Kubernetes control plane, helm and rulecheck), starts one control plane for the
# whole run, and runs every test against it. Builds go to a target directory outside
# the clone, so later runs reuse them.
set -euo pipefail
cd "$(dirname "$0")/.."
home=${KUBESENTIMENT_HOME:-$HOME/.cache/kubesentiment}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$home/target}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

bash scripts/setup.sh
cargo fmt --all --check
bin=$(bash e2e/build.sh)
# helm and rulecheck (Prometheus rule files) for the chart's tests.
export KUBESENTIMENT_TOOLS; KUBESENTIMENT_TOOLS=$(bash scripts/tools.sh)
cargo build --workspace --release --locked
cargo clippy --workspace --all-targets --release --locked -- -D warnings

# One control plane for every test binary; the harness fails rather than skips.
state=$(mktemp -d)
stop() {
  local pid; pid=$(cat "$state/controlplane.pid" 2>/dev/null) || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -rf "$state"
}
trap stop EXIT
bash e2e/start-controlplane.sh "$state"
export KUBECONFIG=$state/cluster/kubeconfig KUBECTL=$bin/kubectl KUBESENTIMENT_REQUIRE_CLUSTER=1

# --release reuses the build above instead of compiling everything again for tests.
cargo test --workspace --release --locked
