#!/usr/bin/env bash
# The README's run command: brings the local system up (e2e/up.sh) and runs the brief's
# example batch through the inference Service, found the way the operator finds it, by
# the Service's EndpointSlices. Leaves the system up; e2e/down.sh stops it.
set -euo pipefail
e2e=$(cd "$(dirname "$0")" && pwd)
bash "$e2e/up.sh"
source "$e2e/.state/env"
echo "--- EndpointSlices of Service $KUBESENTIMENT_NAMESPACE/inference-server"
"$KUBECTL" -n "$KUBESENTIMENT_NAMESPACE" get endpointslices -l kubernetes.io/service-name=inference-server
host=$("$KUBECTL" -n "$KUBESENTIMENT_NAMESPACE" get endpointslices -l kubernetes.io/service-name=inference-server -o jsonpath='{.items[0].endpoints[0].addresses[0]}')
port=$("$KUBECTL" -n "$KUBESENTIMENT_NAMESPACE" get endpointslices -l kubernetes.io/service-name=inference-server -o jsonpath='{.items[0].ports[0].port}')
echo "--- POST http://$host:$port/v1/predict"
curl -fsS "http://$host:$port/v1/predict" -H 'content-type: application/json' -d @"$e2e/examples/brief-texts.json" |
  python3 -c 'import json, sys
for r in json.load(sys.stdin)["results"]:
    print("{label:<9} {score:.3f}  {tokens:>3} tokens  {inference_time_ms:5.1f} ms".format(**r))'
echo "--- the system stays up: source e2e/.state/env to use \$KUBECTL; e2e/down.sh stops it"
