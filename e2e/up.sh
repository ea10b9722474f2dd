#!/usr/bin/env bash
# Brings the whole system up locally on its embedded defaults:
#   1. a real control plane (etcd, kube-apiserver, kube-controller-manager) on loopback;
#   2. the CRDs in crds/;
#   3. INFERENCE_REPLICAS inference-server processes on free ports, registered as the
#      cluster would see them: Service kubesentiment-system/inference-server with one
#      EndpointSlice per process;
#   4. the operator, on configs/async_batch.yaml, watching every namespace;
#   5. the REST facade (KUBESENTIMENT_API), its unkeyed jobs in namespace default;
#   6. waits until everything is ready and writes e2e/.state/env
#      (KUBESENTIMENT_STATE moves e2e/.state elsewhere, as the tests do).
# Workload processes are supervised: a crashed one is restarted on the same port, and
# e2e/.state/<name>.pid always holds its current pid. e2e/down.sh stops everything.
set -euo pipefail
e2e=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$e2e")
state=${KUBESENTIMENT_STATE:-$e2e/.state}
replicas=${INFERENCE_REPLICAS:-1}
namespace=kubesentiment-system

log() { printf 'up: %s\n' "$*" >&2; }

if [ -f "$state/env" ] && [ -f "$state/controlplane.pid" ] && kill -0 "$(cat "$state/controlplane.pid")" 2>/dev/null; then
  log "already up (e2e/.state/env); run e2e/down.sh first to restart"
  exit 0
fi
bash "$e2e/down.sh" >/dev/null 2>&1 || true
rm -rf "$state"
mkdir -p "$state"

bash "$repo/scripts/setup.sh"
target=${CARGO_TARGET_DIR:-$repo/target}
# KUBESENTIMENT_PREBUILT=1 (the stack test sets it) uses the binary already built,
# instead of a build whose feature set would differ from the test build's.
if [ "${KUBESENTIMENT_PREBUILT:-0}" = 1 ] && [ -x "$target/release/inference-server" ]; then
  log "using the prebuilt $target/release/inference-server"
else
  log "building"
  (cd "$repo" && cargo build --release --locked >&2)
fi
bin=$(bash "$e2e/build.sh")
kubectl=$bin/kubectl

log "starting the control plane"
bash "$e2e/start-controlplane.sh" "$state"
export KUBECONFIG=$state/cluster/kubeconfig
k() { "$kubectl" "$@"; }

if compgen -G "$repo/crds/*.yaml" >/dev/null; then
  k apply --server-side -f "$repo/crds/" >&2
  k wait --for condition=established --timeout=60s -f "$repo/crds/" >&2
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# supervise NAME COMMAND...: runs COMMAND, restarting it when it dies, until down.sh.
supervise() {
  local name=$1; shift
  setsid bash -c '
    name=$1; state=$2; shift 2
    while [ ! -f "$state/stopping" ]; do
      "$@" >>"$state/$name.log" 2>&1 &
      echo $! >"$state/$name.pid"
      wait $! || true
      [ -f "$state/stopping" ] || { echo "supervisor: $name exited; restarting" >>"$state/$name.log"; sleep 1; }
    done' supervise "$name" "$state" "$@" </dev/null >/dev/null 2>&1 &
  echo $! >"$state/$name.supervisor.pid"
}

k create namespace "$namespace" --dry-run=client -o yaml | k apply -f - >&2
k -n "$namespace" apply -f - >&2 <<YAML
apiVersion: v1
kind: Service
metadata:
  name: inference-server
spec:
  ports:
  - name: http
    port: 8080
    protocol: TCP
YAML

urls=()
for i in $(seq 0 $((replicas - 1))); do
  port=$(free_port)
  supervise "inference-$i" "$target/release/inference-server" serve --host 127.0.0.1 --port "$port"
  urls+=("http://127.0.0.1:$port")
  k -n "$namespace" apply -f - >&2 <<YAML
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: inference-server-local-$i
  labels:
    kubernetes.io/service-name: inference-server
    endpointslice.kubernetes.io/managed-by: e2e-up.kubesentiment.io
# The API server refuses loopback IPs in EndpointSlices, so local processes are
# registered by name under .localhost, which RFC 6761 reserves for loopback (clients
# such as curl and hickory-dns resolve it to 127.0.0.1 without asking DNS).
addressType: FQDN
ports:
- name: http
  port: $port
  protocol: TCP
endpoints:
- addresses: ["inference-$i.localhost"]
  conditions:
    ready: true
  targetRef:
    kind: Pod
    name: inference-$i
    namespace: $namespace
YAML
done

operator_port=$(free_port)
supervise operator "$target/release/kubesentiment-operator" --config "$repo/configs/async_batch.yaml" \
  --inference-service "$namespace/inference-server" --lease-namespace "$namespace" --host 127.0.0.1 --port "$operator_port"
operator_url=http://127.0.0.1:$operator_port

# The REST facade; KUBESENTIMENT_API_KEYS and KUBESENTIMENT_RATE_LIMIT_PER_MINUTE, when
# set, reach it through the environment. Unkeyed jobs go to the default namespace.
api_port=${KUBESENTIMENT_API_PORT:-$(free_port)}
supervise facade "$target/release/kubesentiment-facade" --config "$repo/configs/async_batch.yaml" \
  --namespace default --inference-service "$namespace/inference-server" --host 127.0.0.1 --port "$api_port"
api_url=http://127.0.0.1:$api_port

for url in "${urls[@]}" "$operator_url" "$api_url"; do
  for _ in $(seq 1 300); do
    curl -fsS "$url/health/ready" >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -fsS "$url/health/ready" >/dev/null || { log "$url never became ready; see $state/*.log"; exit 1; }
done

{
  echo "export KUBECONFIG=$KUBECONFIG"
  echo "export KUBECTL=$kubectl"
  echo "export KUBESENTIMENT_NAMESPACE=$namespace"
  echo "export INFERENCE_URLS=\"${urls[*]}\""
  echo "export OPERATOR_URL=$operator_url"
  echo "export OPERATOR_PID_FILE=$state/operator.pid"
  echo "export KUBESENTIMENT_API=$api_url"
  echo "export FACADE_PID_FILE=$state/facade.pid"
  echo "export CONTROLPLANE_PID=$(cat "$state/controlplane.pid")"
  for i in $(seq 0 $((replicas - 1))); do echo "export INFERENCE_${i}_PID_FILE=$state/inference-$i.pid"; done
} >"$state/env"
log "source e2e/.state/env, then \$KUBECTL apply -f e2e/examples/ && \$KUBECTL get sb, or curl \$KUBESENTIMENT_API/docs/"
