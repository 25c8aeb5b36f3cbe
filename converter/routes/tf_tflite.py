"""Keras / SavedModel -> TFLite with `tf.lite.TFLiteConverter`: fp32, fp16, dynamic-range int8, full-integer int8."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from converter.data import Dataset
from converter.errors import ConversionFailed
from converter.sources.base import SourceModel, quiet_tensorflow, silenced
from protocol.manifest import Quantization

CALIBRATION_SAMPLES = 200


def _converter(source: SourceModel) -> Any:
    tf = quiet_tensorflow()
    if source.kind == "keras":
        return tf.lite.TFLiteConverter.from_keras_model(source.tf_model)
    return tf.lite.TFLiteConverter.from_saved_model(str(source.path))


def build_tf_tflite(
    source: SourceModel, quant: Quantization, calibration: Dataset, io_dtype: str = "float32"
) -> bytes:
    """One TFLite flatbuffer; int8 uses `calibration` as the representative dataset."""
    tf = quiet_tensorflow()
    conv = _converter(source)
    if quant is Quantization.FP16:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif quant is Quantization.DYNAMIC_INT8:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quant is Quantization.INT8:
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: _representative(source, calibration)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if io_dtype in ("int8", "uint8"):
            conv.inference_input_type = getattr(tf, io_dtype)
            conv.inference_output_type = getattr(tf, io_dtype)
    try:
        with silenced():
            return bytes(conv.convert())
    except Exception as e:  # the MLIR converter raises ConverterError/RuntimeError/ValueError
        raise ConversionFailed(f"TFLite {quant.value}: {str(e).strip().splitlines()[0][:300]}") from e


def _representative(source: SourceModel, calibration: Dataset) -> Iterator[list[np.ndarray] | dict[str, np.ndarray]]:
    """One sample at a time; by signature input name when there are several (TFLite reorders inputs)."""
    n = min(len(calibration), CALIBRATION_SAMPLES)
    names = [s.name for s in source.inputs]
    for i in range(n):
        one = calibration.take(i, i + 1)
        if len(names) == 1:
            yield [one[names[0]]]
        else:
            yield {name: one[name] for name in names}
