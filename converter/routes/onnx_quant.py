"""ONNX variants of a float ONNX model: fp32, fp16 (I/O kept float32), dynamic int8, static int8 QDQ
(onnxruntime.quantization)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from converter.data import Dataset
from converter.errors import ConversionFailed
from converter.sources.base import silenced
from protocol.manifest import Quantization

CALIBRATION_SAMPLES = 200


class _CalibrationReader:
    """`onnxruntime.quantization.CalibrationDataReader` over the calibration set, one sample per call."""

    def __init__(self, calibration: Dataset, keys: dict[str, str]) -> None:
        n = min(len(calibration), CALIBRATION_SAMPLES)
        samples = (calibration.take(i, i + 1) for i in range(n))
        self._items = iter([{keys.get(k, k): np.asarray(v) for k, v in one.items()} for one in samples])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax calibration
        pass


def build_onnx(fp32: bytes, quant: Quantization, calibration: Dataset, keys: dict[str, str]) -> bytes:
    """One ONNX model of the given quantisation; `keys` maps the source's input names onto the model's."""
    try:
        if quant is Quantization.FP32:
            return fp32
        with silenced():  # onnxruntime's quantizer logs whole tracebacks of what it refuses
            if quant is Quantization.FP16:
                return _fp16(fp32)
            return _int8(fp32, quant, calibration, keys)
    except ConversionFailed:
        raise
    except Exception as e:
        raise ConversionFailed(f"ONNX {quant.value}: {type(e).__name__}: {str(e).strip()[:300]}") from e


def _fp16(fp32: bytes) -> bytes:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load_from_string(fp32), keep_io_types=True)
    return bytes(model.SerializeToString())


QUANTIZABLE = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Gather", "Attention", "LSTM", "GRU"}


def _int8(fp32: bytes, quant: Quantization, calibration: Dataset, keys: dict[str, str]) -> bytes:
    import onnx

    ops = {n.op_type for n in onnx.load_from_string(fp32).graph.node}
    if not ops & QUANTIZABLE:
        raise ConversionFailed(f"nothing to quantise: the model has no Conv, MatMul or Gemm (its ops: "
                               f"{', '.join(sorted(ops))})")
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="edgefleet-onnxq-") as tmp:
        src, pre, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "q.onnx")
        src.write_bytes(fp32)
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        kwargs: dict[str, Any] = {"weight_type": QuantType.QInt8}
        if quant is Quantization.DYNAMIC_INT8:
            quantize_dynamic(str(pre), str(out), **kwargs)
        else:
            quantize_static(
                str(pre), str(out), _CalibrationReader(calibration, keys),
                quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, per_channel=True, **kwargs,
            )
        return out.read_bytes()
