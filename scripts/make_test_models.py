"""Write tiny, real ONNX models with Hugging Face input names, for the Rust tests.

Each is a complete HF-style directory (config.json, tokenizer.json, model.onnx) that
ONNX Runtime really runs; the weights are random but seeded, so results are stable.

- tiny-bert:       input_ids, attention_mask, token_type_ids -> logits [b, 2]
- tiny-distilbert: input_ids, attention_mask -> logits [b, 3], multi-label (sigmoid)
- tiny-encoder:    input_ids, attention_mask, token_type_ids -> last_hidden_state [b, s, 8]

usage: python make_test_models.py TOKENIZER_DIR OUT_DIR
"""

import json
import os
import shutil
import sys

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

VOCAB = 30522
DIM = 8


def graph(name, token_types, out_kind, labels):
    rng = np.random.default_rng(sum(name.encode()))
    inits = [numpy_helper.from_array(rng.standard_normal((VOCAB, DIM)).astype(np.float32), "word_emb")]
    nodes = [helper.make_node("Gather", ["word_emb", "input_ids"], ["emb0"])]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "sequence"]),
    ]
    last = "emb0"
    if token_types:
        inputs.append(helper.make_tensor_value_info("token_type_ids", TensorProto.INT64, ["batch", "sequence"]))
        inits.append(numpy_helper.from_array(rng.standard_normal((2, DIM)).astype(np.float32), "type_emb"))
        nodes += [helper.make_node("Gather", ["type_emb", "token_type_ids"], ["temb"]), helper.make_node("Add", ["emb0", "temb"], ["emb1"])]
        last = "emb1"
    if out_kind == "hidden":
        nodes.append(helper.make_node("Tanh", [last], ["last_hidden_state"]))
        outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", DIM])]
    else:
        # masked mean over the sequence, then a linear layer
        inits += [
            numpy_helper.from_array(rng.standard_normal((DIM, len(labels))).astype(np.float32), "cls_w"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
        ]
        nodes += [
            helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["maskf", "axis_last"], ["mask3"]),
            helper.make_node("Mul", [last, "mask3"], ["masked"]),
            helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
            helper.make_node("ReduceSum", ["maskf", "axis1"], ["count"], keepdims=1),
            helper.make_node("Div", ["summed", "count"], ["pooled"]),
            helper.make_node("MatMul", ["pooled", "cls_w"], ["logits"]),
        ]
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(labels)])]
    g = helper.make_graph(nodes, name, inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


MODELS = {
    "tiny-bert": dict(token_types=True, out_kind="logits", labels=["NEGATIVE", "POSITIVE"], config={"model_type": "bert"}),
    "tiny-distilbert": dict(
        token_types=False,
        out_kind="logits",
        labels=["anger", "joy", "surprise"],
        config={"model_type": "distilbert", "problem_type": "multi_label_classification"},
    ),
    "tiny-encoder": dict(token_types=True, out_kind="hidden", labels=[], config={"model_type": "bert"}),
}


def main(tokenizer_dir, out_dir):
    for name, spec in MODELS.items():
        d = os.path.join(out_dir, name)
        os.makedirs(d, exist_ok=True)
        save(graph(name, spec["token_types"], spec["out_kind"], spec["labels"]), os.path.join(d, "model.onnx"))
        config = dict(spec["config"], max_position_embeddings=512)
        if spec["labels"]:
            config["id2label"] = {str(i): l for i, l in enumerate(spec["labels"])}
            config["label2id"] = {l: i for i, l in enumerate(spec["labels"])}
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config, f, indent=1)
        shutil.copy(os.path.join(tokenizer_dir, "tokenizer.json"), d)
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump({"model_max_length": 32}, f)


if __name__ == "__main__":
    main(*sys.argv[1:3])
