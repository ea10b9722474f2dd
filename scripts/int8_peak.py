"""Measure this CPU's int8 matrix-product limit, and the encoder's share of it.

The limit is what ONNX Runtime's own u8 x s8 GEMM (the kernel the quantized encoder runs
on: VNNI `vpdpbusd` where the CPU has it, AVX2 `vpmaddubsw` where not) reaches on one
pure MatMulInteger, with the same session settings as the server (2 intra-op threads).
The shape is the encoder's largest product at batch 32 x 16 tokens and larger ones; the
best is the limit.

The encoder's figure is texts/s x operations per text, where one text of T tokens costs
2 x T x L x (d x 3d + d x d + 2 x d x f) multiply-adds (the four products of each layer;
attention scores and everything else are not counted).

Each encoder's line also has `op_shares`: the share of its kernel time each operator type
takes (ONNX Runtime's profiler, the same session settings), i.e. where the time that is
not int8 products goes.

The built-in encoder uses the inference server's own operators, which only the server
runs, so it is measured there, in the same run:

    inference-server bench --batch-sizes 32 --tokens 16 --concurrency 0 --rounds 1 --json B.json \
        --ort-profile /tmp/p
    python int8_peak.py --bench B.json --profile /tmp/p_<date>.json

`--bench` takes the bare batch-32 x 16-token point of the server's report, `--profile`
sums ONNX Runtime's profile of that session by operator (the first file the bench writes
is the bare-forward session's).

`--products` adds each of the encoder's four products at batch 32 x 16 tokens in ONNX
Runtime, bare (`MatMulInteger`) and as a quantized graph runs them
(`DynamicQuantizeMatMul`: the activations quantized on the fly, the result scaled back to
f32). The built-in graph has the server's own `QuantizedMatMul` instead; its products are
timed by `cargo test --release -p inference-server --lib time_products -- --ignored`.

usage: python int8_peak.py [--bench REPORT.json] [--profile PROFILE.json] [--products] [ENCODER.onnx ...]
  prints one line per measure, as JSON
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

THREADS = 2
SECONDS = 3.0


def session(path: str, profile: bool = False) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.enable_profiling = profile
    options.intra_op_num_threads = THREADS
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def rate(run) -> float:
    """Calls per second of `run`, after a warm-up, over SECONDS."""
    for _ in range(3):
        run()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < SECONDS:
        run()
        calls += 1
    return calls / (time.perf_counter() - start)


def product(node: onnx.NodeProto, a: np.ndarray, n: int, inits: list, tmp: str) -> float:
    """GOP/s (2 x m x k x n per call) of a graph of the one product `node`, fed `a` [m, k]."""
    (m, k), out = a.shape, TensorProto.INT32 if node.op_type == "MatMulInteger" else TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        node.op_type,
        [helper.make_tensor_value_info("a", helper.np_dtype_to_tensor_dtype(a.dtype), [m, k])],
        [helper.make_tensor_value_info("y", out, [m, n])],
        inits,
    )
    path = os.path.join(tmp, f"{node.op_type}-{m}-{k}-{n}.onnx")
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), path)
    s = session(path)
    return rate(lambda: s.run(None, {"a": a})) * 2 * m * k * n / 1e9


def gemm(m: int, k: int, n: int, tmp: str) -> float:
    """GOP/s of one u8 x s8 MatMulInteger."""
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "b")
    a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    return product(helper.make_node("MatMulInteger", ["a", "b"], ["y"]), a, n, [weight], tmp)


def dynamic_gemm(m: int, k: int, n: int, tmp: str) -> float:
    """GOP/s of the same product as a quantized graph runs it: `DynamicQuantizeMatMul` (quantize
    the f32 activations, the u8 x s8 product, scale back to f32 per channel)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "b"),
        numpy_helper.from_array(rng.random(n, dtype=np.float32) * 0.01, "b_scale"),
        numpy_helper.from_array(np.zeros(n, np.int8), "b_zero"),
    ]
    node = helper.make_node("DynamicQuantizeMatMul", ["a", "b", "b_scale", "b_zero"], ["y"], domain="com.microsoft")
    return product(node, rng.standard_normal((m, k), dtype=np.float32), n, inits, tmp)


def encoder(path: str, batch: int = 32, tokens: int = 16, layers: int = 6, d: int = 384, f: int = 1536) -> dict:
    s = session(path)
    ids = np.full((batch, tokens), 2000, dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    feed = {i.name: feed[i.name] for i in s.get_inputs()}
    texts = rate(lambda: s.run(None, feed)) * batch
    ops = ops_per_text(tokens, layers, d, f)
    return {"model": path, "batch": batch, "tokens": tokens, "texts_per_s": round(texts), "gop_per_s": round(texts * ops / 1e9, 1),
            "op_shares": op_shares(path, feed)}


def op_shares(path: str, feed: dict, runs: int = 100) -> dict:
    """Each operator type's share of the kernel time over `runs` forward passes."""
    s = session(path, profile=True)
    for _ in range(runs):
        s.run(None, feed)
    trace = s.end_profiling()
    shares = profile_shares(trace)
    os.remove(trace)
    return shares


def profile_shares(trace: str) -> dict:
    """Each operator type's share of the kernel time in an ONNX Runtime profile."""
    with open(trace) as f:
        events = json.load(f)
    spent: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            spent[e["args"]["op_name"]] = spent.get(e["args"]["op_name"], 0) + e["dur"]
    total = sum(spent.values())
    return {op: round(t / total, 3) for op, t in sorted(spent.items(), key=lambda kv: -kv[1]) if t / total >= 0.005}


def ops_per_text(tokens: int = 16, layers: int = 6, d: int = 384, f: int = 1536) -> int:
    return 2 * tokens * layers * (d * 3 * d + d * d + 2 * d * f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", help="inference-server bench's --json report")
    parser.add_argument("--profile", help="an ONNX Runtime profile (inference-server --ort-profile)")
    parser.add_argument("--products", action="store_true", help="also each of the encoder's four products, bare and as it runs them")
    parser.add_argument("models", nargs="*", help="encoder graphs in ONNX Runtime's own operators")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        best = 0.0
        for m, k, n in ((512, 384, 1536), (512, 1536, 384), (2048, 1536, 1536)):
            gops = gemm(m, k, n, tmp)
            best = max(best, gops)
            print(json.dumps({"gemm": [m, k, n], "gop_per_s": round(gops, 1)}))
        print(json.dumps({"int8_limit_gop_per_s": round(best, 1)}))
        # QKV, output projection, up- and down-projection at batch 32 x 16 tokens
        for m, k, n in ((512, 384, 1152), (512, 384, 384), (512, 384, 1536), (512, 1536, 384)) if args.products else ():
            bare, wrapped = gemm(m, k, n, tmp), dynamic_gemm(m, k, n, tmp)
            print(json.dumps({"product": [m, k, n], "matmul_integer_gop_per_s": round(bare, 1), "dynamic_quantize_matmul_gop_per_s": round(wrapped, 1),
                              "share_of_limit": round(wrapped / best, 3)}))
        for path in args.models:
            point = encoder(path)
            point["share_of_limit"] = round(point["gop_per_s"] / best, 3)
            print(json.dumps(point))
    if args.bench:
        with open(args.bench) as f:
            report = json.load(f)
        for p in report["points"]:
            if p["what"] == "bare" and p["batch"] == 32 and p["tokens"] == 16:
                gops = p["texts_per_s"] * ops_per_text() / 1e9
                print(json.dumps({"model": report["model"], "server": True, "batch": 32, "tokens": 16, "texts_per_s": round(p["texts_per_s"]),
                                  "gop_per_s": round(gops, 1), "share_of_limit": round(gops / best, 3)}))
    if args.profile:
        print(json.dumps({"profile": args.profile, "op_shares": profile_shares(args.profile)}))


if __name__ == "__main__":
    main()
