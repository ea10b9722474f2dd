#!/usr/bin/env bash
# The README's test command: installs everything the tests need (model assets, the
# local Kubernetes control plane), starts one control plane for the whole run, and runs
# every test against it. Builds go to a target directory outside the clone, so later
# runs reuse them.
set -euo pipefail
cd "$(dirname "$0")/.."
home=${KUBESENTIMENT_HOME:-$HOME/.cache/kubesentiment}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$home/target}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}

bash scripts/setup.sh
cargo fmt --all --check
bin=$(bash e2e/build.sh)
cargo build --workspace --release --locked

# One control plane for every test binary; the harness fails rather than skips.
state=$(mktemp -d)
"$bin/controlplane" --state "$state" >"$state.out" 2>"$state.log" &
cp_pid=$!
trap 'kill -TERM $cp_pid 2>/dev/null; wait $cp_pid 2>/dev/null; rm -rf "$state" "$state.out" "$state.log"' EXIT
for _ in $(seq 1 600); do
  grep -q '^ready' "$state.out" && break
  kill -0 $cp_pid 2>/dev/null || { cat "$state.log" >&2; exit 1; }
  sleep 0.1
done
grep -q '^ready' "$state.out" || { echo "test.sh: the control plane did not start" >&2; cat "$state.log" >&2; exit 1; }
export KUBECONFIG=$state/kubeconfig KUBECTL=$bin/kubectl KUBESENTIMENT_REQUIRE_CLUSTER=1

# --release reuses the build above instead of compiling everything again for tests.
cargo test --workspace --release --locked
