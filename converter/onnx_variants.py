"""ONNX variants: fp32, fp16 (I/O kept float32), dynamic int8, static int8 QDQ (onnxruntime.quantization)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from converter.data import Dataset
from converter.errors import ConversionFailed
from converter.sources import SourceModel
from protocol.manifest import Quantization

CALIBRATION_SAMPLES = 200


class _CalibrationReader:
    """`onnxruntime.quantization.CalibrationDataReader` over the calibration set, one sample per call."""

    def __init__(self, calibration: Dataset, names: list[str]) -> None:
        n = min(len(calibration), CALIBRATION_SAMPLES)
        self._items = iter([{k: calibration.inputs[k][i : i + 1] for k in names} for i in range(n)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax calibration
        pass


def build_onnx(source: SourceModel, quant: Quantization, calibration: Dataset) -> bytes:
    """One ONNX model of the given quantisation."""
    fp32 = source.onnx_bytes()
    try:
        if quant is Quantization.FP32:
            return fp32
        if quant is Quantization.FP16:
            return _fp16(fp32)
        return _int8(fp32, quant, calibration, list(source.input_shapes))
    except ConversionFailed:
        raise
    except Exception as e:
        raise ConversionFailed(f"ONNX {quant.value}: {type(e).__name__}: {str(e).strip()[:300]}") from e


def _fp16(fp32: bytes) -> bytes:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load_from_string(fp32), keep_io_types=True)
    return bytes(model.SerializeToString())


def _int8(fp32: bytes, quant: Quantization, calibration: Dataset, names: list[str]) -> bytes:
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
                str(pre), str(out), _CalibrationReader(calibration, names),
                quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8, per_channel=True, **kwargs,
            )
        return out.read_bytes()
