#!/usr/bin/env bash
# The README's run command: brings the whole system up on a real local node with the
# chart installed from images built here (e2e/up.sh --cluster), applies the brief's
# example batch (e2e/examples/), waits for it to succeed, and prints its status and the
# results read from the location in its status; then runs the brief's curl flow against
# the REST facade's Service, and shows the pods. Leaves the system up; e2e/down.sh stops
# it. `e2e/demo.sh --host` does the same on host processes, without pods.
set -euo pipefail
e2e=$(cd "$(dirname "$0")" && pwd)
if [ "${1:-}" = --host ]; then bash "$e2e/up.sh"; else bash "$e2e/up.sh" --cluster; fi
source "${KUBESENTIMENT_STATE:-$e2e/.state}/env"
k() { "$KUBECTL" "$@"; }
echo "--- kubectl apply -f e2e/examples/"
k apply -f "$e2e/examples/"
k wait --for=jsonpath='{.status.phase}'=Succeeded sentimentbatch/brief --timeout=180s >/dev/null
echo "--- kubectl get sentimentbatches"
k get sentimentbatches
location=$(k get sb brief -o jsonpath='{.status.resultsLocation}')
echo "--- results, from $location"
# configmap://NAMESPACE/NAME holds manifest.json; each part's results.jsonl holds one line per text.
manifest=$(k -n default get configmap "${location##*/}" -o jsonpath='{.data.manifest\.json}')
for part in $(python3 -c 'import json, sys; print(" ".join(p["location"].rsplit("/", 1)[1] for p in json.loads(sys.argv[1])["parts"]))' "$manifest"); do
  k -n default get configmap "$part" -o jsonpath='{.data.results\.jsonl}'
done | python3 -c 'import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print("{index}  {label:<9} {score:.3f}  {tokens:>3} tokens  cached={cached}".format(**r))'

echo "--- the same over REST (the brief's curl flow): POST \$KUBESENTIMENT_API/api/v1/batch/predict"
auth=()
[ -n "${KUBESENTIMENT_API_KEY:-}" ] && auth=(-H "Authorization: Bearer $KUBESENTIMENT_API_KEY")
curl -fsS "${auth[@]}" -X POST "$KUBESENTIMENT_API/api/v1/batch/predict" -H 'Content-Type: application/json' \
  -d '{"texts": ["I love this product! It is amazing.", "This is terrible and disappointing.", "It is okay, nothing special."],
       "priority": "medium", "timeout_seconds": 300}' | tee "${KUBESENTIMENT_STATE:-$e2e/.state}/job.json"
echo
job=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["job_id"])' "${KUBESENTIMENT_STATE:-$e2e/.state}/job.json")
for _ in $(seq 1 300); do
  status=$(curl -fsS "${auth[@]}" "$KUBESENTIMENT_API/api/v1/batch/status/$job")
  case $status in *'"status":"completed"'*|*'"status":"failed"'*|*'"status":"expired"'*|*'"status":"cancelled"'*) break ;; esac
  sleep 0.2
done
echo "--- GET /api/v1/batch/status/$job"
echo "$status"
echo "--- GET /api/v1/batch/results/$job"
curl -fsS "${auth[@]}" "$KUBESENTIMENT_API/api/v1/batch/results/$job"
echo
if [ "$KUBESENTIMENT_MODE" = cluster ]; then
  echo "--- kubectl get pods -n $KUBESENTIMENT_NAMESPACE -o wide"
  k get pods -n "$KUBESENTIMENT_NAMESPACE" -o wide
fi
echo "--- the system stays up: source e2e/.state/env to use \$KUBECTL; e2e/down.sh stops it"
