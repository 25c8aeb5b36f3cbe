"""An ONNX model: its own reference in onnxruntime, shipped byte for byte, and the base of TFLite via onnx2tf."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import ModelLoadError
from converter.measure import ORT_DTYPES
from converter.sources.base import SourceModel, dims
from protocol.manifest import TensorSpec

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul"}
DYNAMIC_OPS = {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"}


def onnx_kind(proto: Any) -> str:
    """The artifact kind an ONNX model already is: int8 (QDQ), dynamic_int8, fp16 (fp16 weights) or fp32."""
    ops = {n.op_type for n in proto.graph.node}
    if ops & DYNAMIC_OPS:
        return "onnx_dynamic_int8"
    if ops & QDQ_OPS:
        return "onnx_int8"
    float_weights = [t for t in proto.graph.initializer if t.data_type in (1, 10)]  # FLOAT, FLOAT16
    if float_weights and sum(t.data_type == 10 for t in float_weights) * 2 > len(float_weights):
        return "onnx_fp16"
    return "onnx_fp32"


def _spec(arg: Any) -> TensorSpec:
    dtype = ORT_DTYPES.get(arg.type)
    if dtype is None:
        raise ModelLoadError(f"tensor {arg.name!r} is {arg.type}; EdgeFleet ships numeric and bool tensors only")
    return TensorSpec(name=arg.name, shape=dims(arg.shape), dtype=dtype)  # type: ignore[arg-type]


def load_onnx(path: Path) -> SourceModel:
    import onnx
    import onnxruntime as ort

    raw = path.read_bytes()
    proto = onnx.load_from_string(raw)
    onnx.checker.check_model(proto)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(raw, opts, providers=["CPUExecutionProvider"])
    inputs = [_spec(i) for i in sess.get_inputs()]
    outputs = [_spec(o) for o in sess.get_outputs()]
    output_names = [o.name for o in outputs]

    def predict(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {s.name: np.asarray(x[s.name]).astype(s.dtype, copy=False) for s in inputs}
        return dict(zip(output_names, sess.run(output_names, feed), strict=True))

    return SourceModel("onnx", path, inputs, output_names, predict, tflite_route="onnx2tf", _onnx=raw,
                       ready_kind=onnx_kind(proto), ready_bytes=raw)
