"""Build the default encoder as a fused int8 ONNX graph from the fp32 weights of a BERT checkpoint.

The graph is written node by node, so nothing depends on the optimizer recognising an
exporter's pattern:

    EmbedLayerNormalization        word + position + type embeddings, LayerNorm, mask index
    per layer:
      product + SelfAttention      Q, K and V as one [d, 3d] product, then softmax and heads
      product + ResidualLayerNorm  output projection, bias, residual, LayerNorm
      product + BiasGelu           feed-forward up-projection and exact (erf) GELU
      product + ResidualLayerNorm  down-projection, bias, residual, LayerNorm

`SelfAttention`, `ResidualLayerNorm` and `BiasGelu` are the inference server's own
operators (domain `kubesentiment`, inference-server/src/model/kernels.rs): ONNX Runtime's
CPU kernels for these steps took a third of the forward pass (docs/MODELS.md). The
residual stream is kept as [tokens, d].

Its four products a layer are the server's `QuantizedMatMul`: the weights are quantized
here, per output column and symmetric, and packed in panels of 16 columns by steps of 4
along k (the VNNI `vpdpbusd` operand); the server quantizes each activation row on the
fly (u8 x s8).

The same graph in ONNX Runtime's own operators (`Attention`, `BiasGelu`, and `Add, Add,
LayerNormalization`) is what `--fp32` writes, and what is checked against a plain numpy
BERT on random ids before anything is written (a difference over 1e-3 stops the build);
the server's tests hold the int8 graph to that fp32 graph.

Inputs and output keep the names and types every BERT export has (int64 `input_ids`,
`attention_mask`, `token_type_ids`; float `last_hidden_state [b, s, d]`), so the
inference server loads it like any encoder. Padding must be on the right: the mask
becomes one length per row.

usage: python build_encoder.py MODEL_DIR OUT.onnx [--fp32]
  MODEL_DIR holds config.json and model.safetensors (a BertModel, as sentence-transformers
  ships it); --fp32 writes the graph in ONNX Runtime's operators without quantizing (the
  reference the int8 graph is tested against).
"""

import json
import math
import os
import shutil
import struct
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS = "com.microsoft"
KS = "kubesentiment"  # the inference server's own operators (inference-server/src/model/kernels.rs)


def safetensors(path: str) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file (an 8-byte header length, a JSON header, the data)."""
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        data = f.read()
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        out[name] = np.frombuffer(data[start:end], dtype=dtypes[meta["dtype"]]).reshape(meta["shape"]).astype(np.float32)
    return out


def pack(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`weight [k, n]` as `QuantizedMatMul` takes it: int8 per output column (symmetric,
    `weight[:, c] ~ scale[c] * q[:, c]`) packed as [n/16, k/4, 16, 4] (`packed[p, s, c, j]
    = q[4s + j, 16p + c]`), its scales, and `offset[c] = scale[c] * sum(q[:, c])`."""
    k, n = weight.shape
    if k % 4 or n % 16:
        raise SystemExit(f"a product of [{k}, {n}]: QuantizedMatMul takes k a multiple of 4 and n of 16")
    scale = np.abs(weight).max(axis=0) / 127
    scale[scale == 0] = 1
    q = np.clip(np.rint(weight / scale), -127, 127).astype(np.int8)
    packed = q.reshape(k // 4, 4, n // 16, 16).transpose(2, 0, 3, 1)
    offset = scale * q.sum(axis=0, dtype=np.int64)
    return packed, scale.astype(np.float32), offset.astype(np.float32)


def build(weights: dict[str, np.ndarray], config: dict, kernels: bool = False) -> onnx.ModelProto:
    """The fused graph; with `kernels`, the int8 products, attention, GELU and the residual
    LayerNorms are the inference server's own operators (domain `kubesentiment`), which
    only it can run."""
    heads, d = config["num_attention_heads"], config["hidden_size"]
    eps = float(config.get("layer_norm_eps", 1e-12))
    if config.get("hidden_act", "gelu") != "gelu":
        raise SystemExit(f"hidden_act {config['hidden_act']!r}: only gelu is built")
    if kernels and d // heads not in (16, 32, 64, 128):
        raise SystemExit(f"heads of {d // heads}: the server's SelfAttention runs heads of 16, 32, 64 or 128")
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""
    w = lambda name: weights[prefix + name]  # noqa: E731

    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(op: str, inputs: list[str], output: str, domain: str = "", **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [output], domain=domain, **attrs))
        return output

    def matmul(x: str, weight: np.ndarray, out: str) -> str:
        """x @ weight: MatMul, or with `kernels` QuantizedMatMul on the packed int8 weight."""
        if not kernels:
            return node("MatMul", [x, const(out + "_w", weight)], out)
        q, scale, offset = pack(weight)
        return node("QuantizedMatMul", [x, const(out + "_wq", q), const(out + "_scale", scale), const(out + "_offset", offset)], out, domain=KS)

    def residual_norm(x: str, bias: str, skip: str, gamma: str, beta: str, out: str) -> str:
        if kernels:
            return node("ResidualLayerNorm", [x, bias, skip, gamma, beta], out, domain=KS, epsilon=eps)
        # Add, Add, LayerNormalization on [tokens, d]. ONNX Runtime fuses this pattern into
        # SkipLayerNormalization only on 3-d tensors, and its CPU kernel for that was about
        # 5x slower here than these three (docs/MODELS.md).
        summed = node("Add", [node("Add", [x, bias], out + "_biased"), skip], out + "_sum")
        return node("LayerNormalization", [summed, gamma, beta], out, axis=-1, epsilon=eps)

    for name in ("input_ids", "attention_mask", "token_type_ids"):
        node("Cast", [name], name + "_i32", to=TensorProto.INT32)
    nodes.append(
        helper.make_node(
            "EmbedLayerNormalization",
            [
                "input_ids_i32",
                "token_type_ids_i32",
                const("word_embeddings", w("embeddings.word_embeddings.weight")),
                const("position_embeddings", w("embeddings.position_embeddings.weight")),
                const("token_type_embeddings", w("embeddings.token_type_embeddings.weight")),
                const("embeddings_ln_gamma", w("embeddings.LayerNorm.weight")),
                const("embeddings_ln_beta", w("embeddings.LayerNorm.bias")),
                "attention_mask_i32",
            ],
            ["embeddings", "mask_index"],
            domain=MS,
            epsilon=eps,
        )
    )
    # The residual stream is [tokens, d]; Attention alone wants [batch, sequence, d].
    cube = node("Concat", [node("Shape", ["input_ids"], "ids_shape"), const("hidden", np.array([d], np.int64))], "cube_shape", axis=0)
    flat = const("flat_shape", np.array([-1, d], np.int64))
    x = node("Reshape", ["embeddings", flat], "h0")
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        qkv_w = np.concatenate([w(p + f"attention.self.{k}.weight").T for k in ("query", "key", "value")], axis=1)
        qkv_b = np.concatenate([w(p + f"attention.self.{k}.bias") for k in ("query", "key", "value")])
        if kernels:
            # one int8 QKV product, then attention on [tokens, 3d] as one operator
            qkv = matmul(x, qkv_w, f"l{i}_qkv")
            attn = node("SelfAttention", [qkv, const(f"l{i}_qkv_b", qkv_b), "mask_index"], f"l{i}_attn", domain=KS, num_heads=heads)
        else:
            attn = node(
                "Attention",
                [node("Reshape", [x, cube], f"l{i}_in"), const(f"l{i}_qkv_w", qkv_w), const(f"l{i}_qkv_b", qkv_b), "mask_index"],
                f"l{i}_attn3", domain=MS, num_heads=heads,
            )
            attn = node("Reshape", [attn, flat], f"l{i}_attn")
        proj = matmul(attn, w(p + "attention.output.dense.weight").T, f"l{i}_proj")
        h1 = residual_norm(
            proj, const(f"l{i}_o_b", w(p + "attention.output.dense.bias")), x,
            const(f"l{i}_ln1_g", w(p + "attention.output.LayerNorm.weight")),
            const(f"l{i}_ln1_b", w(p + "attention.output.LayerNorm.bias")), f"l{i}_h1",
        )
        up = matmul(h1, w(p + "intermediate.dense.weight").T, f"l{i}_up")
        act = node("BiasGelu", [up, const(f"l{i}_up_b", w(p + "intermediate.dense.bias"))], f"l{i}_gelu", domain=KS if kernels else MS)
        down = matmul(act, w(p + "output.dense.weight").T, f"l{i}_down")
        x = residual_norm(
            down, const(f"l{i}_down_b", w(p + "output.dense.bias")), h1,
            const(f"l{i}_ln2_g", w(p + "output.LayerNorm.weight")),
            const(f"l{i}_ln2_b", w(p + "output.LayerNorm.bias")), f"l{i}_out",
        )
    node("Reshape", [x, cube], "last_hidden_state")

    ints = lambda name: helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])  # noqa: E731
    graph = helper.make_graph(
        nodes,
        "encoder",
        [ints("input_ids"), ints("attention_mask"), ints("token_type_ids")],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", d])],
        inits,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(MS, 1)] + ([helper.make_opsetid(KS, 1)] if kernels else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


def reference(weights: dict[str, np.ndarray], config: dict, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """BERT's last_hidden_state in plain numpy, layer by layer as the paper writes it."""
    prefix = "bert." if "bert.embeddings.word_embeddings.weight" in weights else ""
    w = lambda name: weights[prefix + name]  # noqa: E731
    eps = float(config.get("layer_norm_eps", 1e-12))
    heads, d = config["num_attention_heads"], config["hidden_size"]
    b, s = ids.shape
    erf = np.vectorize(math.erf)

    def norm(x, name):
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + eps) * w(name + ".weight") + w(name + ".bias")

    def linear(x, name):
        return x @ w(name + ".weight").T + w(name + ".bias")

    x = w("embeddings.word_embeddings.weight")[ids] + w("embeddings.position_embeddings.weight")[:s][None]
    x = norm(x + w("embeddings.token_type_embeddings.weight")[0], "embeddings.LayerNorm")
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (linear(x, p + f"attention.self.{n}").reshape(b, s, heads, -1).transpose(0, 2, 1, 3) for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d // heads) + (1 - mask)[:, None, None, :] * -1e9
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        attn = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, d)
        h1 = norm(linear(attn, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        up = linear(h1, p + "intermediate.dense")
        x = norm(linear(0.5 * up * (1 + erf(up / math.sqrt(2))), p + "output.dense") + h1, p + "output.LayerNorm")
    return x


def verify(path: str, weights: dict[str, np.ndarray], config: dict) -> None:
    """The fp32 graph gives numpy's BERT on every unpadded position, within 1e-3."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    lengths = np.array([12, 7, 3, 9])
    mask = (np.arange(12)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1000, config["vocab_size"], mask.shape) * mask
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = session.run(["last_hidden_state"], {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})[0]
    want = reference(weights, config, ids, mask)
    worst = max(np.abs(got[r, :n] - want[r, :n]).max() for r, n in enumerate(lengths))
    if worst > 1e-3:
        raise SystemExit(f"the fused graph differs from numpy's BERT by {worst}")


def main(src: str, dst: str, *flags: str) -> None:
    with open(os.path.join(src, "config.json")) as f:
        config = json.load(f)
    weights = safetensors(os.path.join(src, "model.safetensors"))
    model = build(weights, config)
    onnx.checker.check_model(model)
    with tempfile.TemporaryDirectory() as tmp:
        fused = os.path.join(tmp, "fused.onnx")
        onnx.save(model, fused)
        verify(fused, weights, config)
        if "--fp32" in flags:
            shutil.move(fused, dst + ".tmp")
        else:
            # The same graph with the server's own attention, GELU and LayerNorms (ONNX
            # Runtime cannot run it here; the server's tests hold it to the fp32 graph
            # verified above).
            onnx.save(build(weights, config, kernels=True), dst + ".tmp")
    os.replace(dst + ".tmp", dst)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
