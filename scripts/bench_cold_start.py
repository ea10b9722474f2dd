#!/usr/bin/env python3
"""Served throughput of a fresh inference server, pass by pass: does a new pod reach its
steady rate at once (#17, a fast start)? It starts `inference-server serve` on port 0,
times readiness, then sends the 3,000 UCI sentences three times, 8 clients posting 50
texts each to /v1/predict, and prints texts/s per pass. Extra arguments go to `serve`.

    python3 scripts/bench_cold_start.py [--model DIR]
"""

import concurrent.futures as cf
import json
import os
import subprocess
import sys
import time
import urllib.request

HOME = os.environ.get("KUBESENTIMENT_HOME", os.path.expanduser("~/.cache/kubesentiment"))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(HOME, "target"))


def main() -> None:
    texts = []
    for name in ("amazon", "imdb", "yelp"):
        with open(os.path.join(HOME, "data/uci", f"{name}.json")) as f:
            texts += [x["text"] for x in json.load(f) if x["text"].strip()]
    texts = texts[:3000]
    cmd = [os.path.join(TARGET, "release/inference-server"), "serve", "--host", "127.0.0.1", "--port", "0", *sys.argv[1:]]
    started = time.monotonic()
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = next(line.split("listening on ")[1].split()[0] for line in server.stdout if "listening on http://" in line)
        while True:
            try:
                if urllib.request.urlopen(url + "/health/ready").status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.01)
        ready = time.monotonic() - started

        def post(chunk):
            body = json.dumps({"texts": chunk}).encode()
            req = urllib.request.Request(url + "/v1/predict", data=body, headers={"content-type": "application/json"})
            urllib.request.urlopen(req).read()

        chunks = [texts[i : i + 50] for i in range(0, len(texts), 50)]
        rates = []
        for _ in range(3):
            t = time.monotonic()
            with cf.ThreadPoolExecutor(8) as pool:
                list(pool.map(post, chunks))
            rates.append(len(texts) / (time.monotonic() - t))
        print(f"ready after {ready:.2f} s; texts/s pass 1, 2, 3: " + ", ".join(f"{r:.0f}" for r in rates))
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
