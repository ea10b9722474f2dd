#!/usr/bin/env python3
"""The whole CR path against the served path, on the same texts, in alternating rounds.

Run against a stack from e2e/up.sh:  source e2e/.state/env && python3 scripts/bench_cr_path.py
Served: the texts POSTed to /v1/predict of the first inference endpoint in chunks of
--chunk, --clients at a time (what the operator does with `workers` chunks in flight).
CR: a SentimentBatch reading the same texts from a ConfigMap, from `kubectl create` to
phase Succeeded (every part and the manifest written). Each round marks its texts so
the operator's result cache cannot help. Prints one JSON object per round and a summary.
"""
import argparse, concurrent.futures, json, os, statistics, subprocess, time, urllib.request

p = argparse.ArgumentParser()
p.add_argument("--texts", type=int, default=3000)
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--chunk", type=int, default=100)
p.add_argument("--clients", type=int, default=2)
p.add_argument("--namespace", default="bench")
a = p.parse_args()
kubectl = [os.environ["KUBECTL"]]
url = os.environ["INFERENCE_URLS"].split()[0]
home = os.environ.get("KUBESENTIMENT_HOME", os.path.expanduser("~/.cache/kubesentiment"))
corpus = []
for name in ("amazon", "imdb", "yelp"):
    corpus += [row["text"] if isinstance(row, dict) else row[0] for row in json.load(open(f"{home}/data/uci/{name}.json"))]
corpus = [t.strip() for t in corpus if t.strip()]


def k(*args, stdin=None):
    return subprocess.run(kubectl + list(args), input=stdin, capture_output=True, text=True, check=True).stdout


def served(texts):
    def post(chunk):
        req = urllib.request.Request(f"{url}/v1/predict", json.dumps({"texts": chunk}).encode(), {"content-type": "application/json"})
        return len(json.load(urllib.request.urlopen(req))["results"])
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(a.clients) as pool:
        n = sum(pool.map(post, [texts[i:i + a.chunk] for i in range(0, len(texts), a.chunk)]))
    return n / (time.perf_counter() - t0)


def cr(texts, name):
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": a.namespace}, "data": {"texts": "\n".join(texts)}}
    k("apply", "-f", "-", stdin=json.dumps(cm))
    sb = {"apiVersion": "kubesentiment.io/v1alpha1", "kind": "SentimentBatch", "metadata": {"name": name, "namespace": a.namespace},
          "spec": {"source": {"configMapKeyRef": {"name": name, "key": "texts"}}, "maxBatchSize": 1000, "timeoutSeconds": 3600}}
    t0 = time.perf_counter()
    k("create", "-f", "-", stdin=json.dumps(sb))
    while True:
        phase = k("-n", a.namespace, "get", "sb", name, "-o", "jsonpath={.status.phase}")
        if phase in ("Succeeded", "Failed", "Expired", "Cancelled"):
            break
        time.sleep(0.1)
    elapsed = time.perf_counter() - t0
    assert phase == "Succeeded", phase
    return len(texts) / elapsed


subprocess.run(kubectl + ["create", "namespace", a.namespace], capture_output=True)
stamp = int(time.time())
ratios = []
for r in range(a.rounds):
    texts = [f"{corpus[i % len(corpus)]} ({stamp}-{r})" for i in range(a.texts)]
    s = served(texts)
    c = cr(texts, f"bench-{stamp}-{r}")
    ratios.append(c / s)
    print(json.dumps({"round": r, "texts": a.texts, "served_tps": round(s, 1), "cr_tps": round(c, 1), "cr_over_served": round(c / s, 3)}), flush=True)
print(json.dumps({"median_cr_over_served": round(statistics.median(ratios), 3), "rounds": [round(x, 3) for x in ratios]}))
