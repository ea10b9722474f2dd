#!/usr/bin/env bash
# Brings the whole system up locally on its embedded defaults, in one of two modes.
#
#   e2e/up.sh --cluster   the real thing: a control plane and a node (containerd, runc,
#                         kubelet, kube-proxy, CoreDNS, metrics-server) on the bridge ks0;
#                         the images built here and pushed to a registry on loopback;
#                         `helm install` of charts/kubesentiment as release kubesentiment
#                         in kubesentiment-system (e2e/values-local.yaml, then
#                         KUBESENTIMENT_HELM_SET in helm --set syntax). Every component
#                         runs in a pod. Needs root.
#   e2e/up.sh             fast host processes: the control plane without a node, the
#                         inference servers, the operator and the facade run as local
#                         processes registered as EndpointSlices (for tests that need no
#                         pods). The inference servers run at nice INFERENCE_NICE (10):
#                         they are the batch work, and the API server, operator and
#                         facade answering clients on the same cores come first (#17).
#
# Both write e2e/.state/env (KUBECONFIG, KUBECTL, KUBESENTIMENT_API, KUBESENTIMENT_API_KEY,
# INFERENCE_URLS, OPERATOR_URL, …; KUBESENTIMENT_STATE moves e2e/.state elsewhere, as the
# tests do). Host processes are supervised: a crashed one restarts on the same port and
# e2e/.state/<name>.pid holds its current pid. e2e/down.sh stops everything and removes
# what the node added to the machine.
set -euo pipefail
e2e=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$e2e")
state=${KUBESENTIMENT_STATE:-$e2e/.state}
home=${KUBESENTIMENT_HOME:-$HOME/.cache/kubesentiment}
mode=host
[ "${1:-}" = --cluster ] && mode=cluster
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
# KUBESENTIMENT_PREBUILT=1 (the tests set it) uses the binaries already built, instead of
# a build whose feature set would differ from the test build's.
if [ "${KUBESENTIMENT_PREBUILT:-0}" = 1 ] && [ -x "$target/release/inference-server" ]; then
  log "using the prebuilt binaries in $target/release"
else
  log "building"
  (cd "$repo" && cargo build --release --locked >&2)
fi
bin=$(bash "$e2e/build.sh")
kubectl=$bin/kubectl
k() { "$kubectl" "$@"; }

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

wait_ready() {
  local url
  for url in "$@"; do
    for _ in $(seq 1 300); do
      curl -fsS "$url/health/ready" >/dev/null 2>&1 && break
      sleep 0.2
    done
    curl -fsS "$url/health/ready" >/dev/null || { log "$url never became ready; see $state/*.log"; exit 1; }
  done
}

cluster() {
  [ "$(id -u)" = 0 ] || { log "--cluster runs a node (containerd, kubelet, a bridge) and needs root"; exit 1; }
  local node tools registry_port registry tag helm
  node=$(bash "$e2e/build-node.sh")
  tools=$(bash "$repo/scripts/tools.sh")
  helm=$tools/helm
  echo "$node" >"$state/node-bin"

  registry_port=$(free_port)
  registry=127.0.0.1:$registry_port
  log "starting the image registry on $registry"
  supervise registry "$node/bin/imagebuild" serve --addr "$registry" --dir "$state/registry"
  for _ in $(seq 1 100); do curl -fsS "http://$registry/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
  log "building the images and pushing them"
  tag=$("$node/bin/imagebuild" push --registry "$registry" --repo "$repo" --build "$target/release" --assets "$home" \
    --node "$node/bin" --base "$node/rootfs" 2>"$state/images.log")
  cat "$state/images.log" >&2

  log "starting the control plane and the node"
  bash "$e2e/start-controlplane.sh" "$state" --node --node-bin "$node/bin" --registry "$registry"
  export KUBECONFIG=$state/cluster/kubeconfig
  for _ in $(seq 1 300); do k get node ks-node >/dev/null 2>&1 && break; sleep 0.2; done
  k wait --for=condition=Ready node/ks-node --timeout=180s >&2
  local addon
  for addon in "$e2e"/addons/*.yaml; do sed "s|REGISTRY|$registry|g" "$addon" | k apply -f - >&2; done

  log "helm install kubesentiment"
  local sets=(--set "image.registry=$registry" --set "image.tag=$tag")
  [ -n "${KUBESENTIMENT_HELM_SET:-}" ] && sets+=(--set "$KUBESENTIMENT_HELM_SET")
  local began=$SECONDS
  "$helm" install kubesentiment "$repo/charts/kubesentiment" -n "$namespace" --create-namespace \
    -f "$e2e/values-local.yaml" "${sets[@]}" --wait --timeout 10m >&2
  k -n kube-system wait --for=condition=Available deploy --all --timeout=180s >&2
  log "helm install to all Ready: $((SECONDS - began)) s"

  local facade operator inference key
  facade=$(k -n "$namespace" get svc kubesentiment-facade -o jsonpath='{.spec.clusterIP}')
  operator=$(k -n "$namespace" get svc kubesentiment-operator -o jsonpath='{.spec.clusterIP}')
  inference=$(k -n "$namespace" get svc kubesentiment-inference -o jsonpath='{.spec.clusterIP}')
  key=$(k -n "$namespace" get secret kubesentiment-api-keys -o jsonpath='{.data.api-keys}' 2>/dev/null | base64 -d | cut -d, -f1 | cut -d= -f1)
  wait_ready "http://$facade:8000"
  {
    echo "export KUBESENTIMENT_MODE=cluster"
    echo "export KUBECONFIG=$KUBECONFIG"
    echo "export KUBECTL=$kubectl"
    echo "export HELM=$helm"
    echo "export KUBESENTIMENT_NAMESPACE=$namespace"
    echo "export KUBESENTIMENT_REGISTRY=$registry"
    echo "export KUBESENTIMENT_IMAGE_TAG=$tag"
    echo "export KUBESENTIMENT_API=http://$facade:8000"
    echo "export KUBESENTIMENT_API_KEY=$key"
    echo "export INFERENCE_URLS=\"http://$inference:8080\""
    echo "export OPERATOR_URL=http://$operator:8081"
    echo "export CONTROLPLANE_PID=$(cat "$state/controlplane.pid")"
  } >"$state/env"
}

host() {
  local replicas=${INFERENCE_REPLICAS:-1} inference_nice=${INFERENCE_NICE:-10}
  log "starting the control plane"
  bash "$e2e/start-controlplane.sh" "$state"
  export KUBECONFIG=$state/cluster/kubeconfig
  if compgen -G "$repo/crds/*.yaml" >/dev/null; then
    k apply --server-side -f "$repo/crds/" >&2
    k wait --for condition=established --timeout=60s -f "$repo/crds/" >&2
  fi
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
  local urls=() i port
  for i in $(seq 0 $((replicas - 1))); do
    port=$(free_port)
    supervise "inference-$i" nice -n "$inference_nice" "$target/release/inference-server" serve --host 127.0.0.1 --port "$port"
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

  local operator_port api_port
  operator_port=$(free_port)
  supervise operator "$target/release/kubesentiment-operator" --config "$repo/configs/async_batch.yaml" \
    --inference-service "$namespace/inference-server" --lease-namespace "$namespace" --host 127.0.0.1 --port "$operator_port" \
    --callback-allow "public,127.0.0.0/8,::1/128"
  # The REST facade; KUBESENTIMENT_API_KEYS and KUBESENTIMENT_RATE_LIMIT_PER_MINUTE, when
  # set, reach it through the environment. Unkeyed jobs go to the default namespace.
  api_port=${KUBESENTIMENT_API_PORT:-$(free_port)}
  supervise facade "$target/release/kubesentiment-facade" --config "$repo/configs/async_batch.yaml" \
    --namespace default --inference-service "$namespace/inference-server" --host 127.0.0.1 --port "$api_port"
  wait_ready "${urls[@]}" "http://127.0.0.1:$operator_port" "http://127.0.0.1:$api_port"
  local key=${KUBESENTIMENT_API_KEYS:-}
  key=${key%%,*}
  {
    echo "export KUBESENTIMENT_MODE=host"
    echo "export KUBECONFIG=$KUBECONFIG"
    echo "export KUBECTL=$kubectl"
    echo "export KUBESENTIMENT_NAMESPACE=$namespace"
    echo "export INFERENCE_URLS=\"${urls[*]}\""
    echo "export OPERATOR_URL=http://127.0.0.1:$operator_port"
    echo "export OPERATOR_PID_FILE=$state/operator.pid"
    echo "export KUBESENTIMENT_API=http://127.0.0.1:$api_port"
    echo "export KUBESENTIMENT_API_KEY=${key%%=*}"
    echo "export FACADE_PID_FILE=$state/facade.pid"
    echo "export CONTROLPLANE_PID=$(cat "$state/controlplane.pid")"
    for i in $(seq 0 $((replicas - 1))); do echo "export INFERENCE_${i}_PID_FILE=$state/inference-$i.pid"; done
  } >"$state/env"
}

"$mode"
log "source e2e/.state/env, then \$KUBECTL apply -f e2e/examples/ && \$KUBECTL get sb, or curl \$KUBESENTIMENT_API/docs/"
