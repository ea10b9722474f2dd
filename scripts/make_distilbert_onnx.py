"""Write a DistilBERT-shaped sequence classifier with random weights, for benchmarks.

No package ships DistilBERT-SST-2 weights, but its cost is in its shape: 6 layers,
hidden 768, 12 heads, FFN 3072, vocab 30522, inputs input_ids + attention_mask, output
logits [b, 2]. This builds that graph with onnx + numpy (no torch), as optimum would
export it, plus an int8 copy by dynamic quantization. Nothing here is committed.

usage: python make_distilbert_onnx.py TOKENIZER_DIR OUT_DIR
  writes OUT_DIR/distilbert-random/ and OUT_DIR/distilbert-random-int8/
"""

import json
import os
import shutil
import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

D, HEADS, FFN, LAYERS, VOCAB, POS = 768, 12, 3072, 6, 30522, 512


def build():
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def weight(name, *shape):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * 0.02).astype(np.float32), name))
        return name

    def const(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.array(value, dtype=dtype), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], **attrs))
        return name

    def linear(x, name, n_in, n_out):
        return node("Add", [node("MatMul", [x, weight(name + ".w", n_in, n_out)], name + ".mm"), const(name + ".b", np.zeros(n_out))], name)

    def layer_norm(x, name):
        return node("LayerNormalization", [x, const(name + ".g", np.ones(D)), const(name + ".beta", np.zeros(D))], name, axis=-1, epsilon=1e-12)

    const("zero", 0, np.int64)
    const("one", 1, np.int64)
    const("heads_shape", [0, 0, HEADS, D // HEADS], np.int64)
    const("merge_shape", [0, 0, D], np.int64)
    seq = node("Gather", [node("Shape", ["input_ids"], "ids_shape"), "one"], "seq_len", axis=0)
    positions = node("Range", ["zero", seq, "one"], "positions")
    emb = node("Add", [node("Gather", [weight("word_emb", VOCAB, D), "input_ids"], "wemb"), node("Gather", [weight("pos_emb", POS, D), positions], "pemb")], "emb")
    x = layer_norm(emb, "emb_ln")
    maskf = node("Cast", ["attention_mask"], "maskf", to=TensorProto.FLOAT)
    bias = node("Mul", [node("Sub", [const("onef", 1.0), maskf], "inv_mask"), const("neg", -1e4)], "mask_bias2")
    bias = node("Unsqueeze", [bias, const("axes12", [1, 2], np.int64)], "mask_bias")
    for i in range(LAYERS):
        p = f"l{i}"
        q = node("Transpose", [node("Reshape", [linear(x, p + ".q", D, D), "heads_shape"], p + ".qr")], p + ".qt", perm=[0, 2, 1, 3])
        k = node("Transpose", [node("Reshape", [linear(x, p + ".k", D, D), "heads_shape"], p + ".kr")], p + ".kt", perm=[0, 2, 3, 1])
        v = node("Transpose", [node("Reshape", [linear(x, p + ".v", D, D), "heads_shape"], p + ".vr")], p + ".vt", perm=[0, 2, 1, 3])
        scores = node("Add", [node("Mul", [node("MatMul", [q, k], p + ".qk"), const(p + ".scale", 1 / np.sqrt(D // HEADS))], p + ".scaled"), bias], p + ".scores")
        ctx = node("MatMul", [node("Softmax", [scores], p + ".probs", axis=-1), v], p + ".ctx")
        ctx = node("Reshape", [node("Transpose", [ctx], p + ".ctxt", perm=[0, 2, 1, 3]), "merge_shape"], p + ".ctxm")
        x = layer_norm(node("Add", [x, linear(ctx, p + ".o", D, D)], p + ".res1"), p + ".ln1")
        h = linear(x, p + ".ff1", D, FFN)
        gelu = node("Mul", [node("Mul", [h, const(p + ".half", 0.5)], p + ".hh"), node("Add", [node("Erf", [node("Div", [h, const(p + ".sqrt2", np.sqrt(2.0))], p + ".hs")], p + ".erf"), const(p + ".onef", 1.0)], p + ".erf1")], p + ".gelu")
        x = layer_norm(node("Add", [x, linear(gelu, p + ".ff2", FFN, D)], p + ".res2"), p + ".ln2")
    cls = node("Gather", [x, "zero"], "cls", axis=1)
    pre = node("Relu", [linear(cls, "pre_classifier", D, D)], "pre_relu")
    logits = linear(pre, "logits", D, 2)
    graph = helper.make_graph(
        nodes,
        "distilbert-random",
        [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info(logits, TensorProto.FLOAT, ["batch", 2])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def main(tokenizer_dir, out_dir):
    fp32 = os.path.join(out_dir, "distilbert-random")
    int8 = os.path.join(out_dir, "distilbert-random-int8")
    for d in (fp32, int8):
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump({"model_type": "distilbert", "max_position_embeddings": POS, "id2label": {"0": "NEGATIVE", "1": "POSITIVE"}}, f)
        shutil.copy(os.path.join(tokenizer_dir, "tokenizer.json"), d)
    save(build(), os.path.join(fp32, "model.onnx"))
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(os.path.join(fp32, "model.onnx"), os.path.join(int8, "model.onnx"), weight_type=QuantType.QInt8)


if __name__ == "__main__":
    main(*sys.argv[1:3])
