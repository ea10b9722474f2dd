"""Latency of the REST facade's submit and status routes, with N concurrent clients.

    source e2e/.state/env && [KUBESENTIMENT_API_KEY=KEY] ~/.cache/kubesentiment/venv/bin/python scripts/bench_rest_latency.py [CLIENTS] [REQUESTS_EACH]

Each client submits one 10-text job, then reads its status REQUESTS_EACH times. Prints
p50/p95/p99 of both, in milliseconds. A stopgap until the bench tool (issue #7)."""

import os
import sys
import threading
import time

import httpx

URL = os.environ["KUBESENTIMENT_API"]
KEY = os.environ.get("KUBESENTIMENT_API_KEY")
HEADERS = {"Authorization": f"Bearer {KEY}"} if KEY else {}
CLIENTS = int(sys.argv[1]) if len(sys.argv) > 1 else 20
EACH = int(sys.argv[2]) if len(sys.argv) > 2 else 50
submit, status = [], []


def client(i):
    with httpx.Client(base_url=URL, timeout=30, headers=HEADERS) as c:
        t = time.perf_counter()
        r = c.post("/api/v1/batch/predict", json={"texts": [f"review {i}-{k}: it was fine" for k in range(10)], "priority": "low"})
        submit.append(time.perf_counter() - t)
        r.raise_for_status()
        job = r.json()["job_id"]
        for _ in range(EACH):
            t = time.perf_counter()
            c.get(f"/api/v1/batch/status/{job}").raise_for_status()
            status.append(time.perf_counter() - t)


threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
for t in threads:
    t.start()
for t in threads:
    t.join()


def q(xs, p):
    xs = sorted(xs)
    return 1000 * xs[min(len(xs) - 1, int(p * len(xs)))]


for name, xs in [("submit", submit), ("status", status)]:
    print(f"{name}: n={len(xs)} p50={q(xs, 0.5):.1f} ms p95={q(xs, 0.95):.1f} ms p99={q(xs, 0.99):.1f} ms")
