"""A ready-made `.tflite` file: shipped byte for byte, measured in LiteRT; its own reference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import ModelLoadError
from converter.sources.base import SourceModel, silenced
from protocol.manifest import TensorSpec
from protocol.signatures import SignatureChoiceError, choose_signature


def tflite_kind(interp: Any) -> str:
    """The artifact kind a TFLite model already is, from its tensors: int8 (integer activations), dynamic_int8
    (int8 weights, float activations), fp16 (fp16 weights) or fp32."""
    details = interp.get_tensor_details()
    io = {int(d["index"]) for d in (*interp.get_input_details(), *interp.get_output_details())}
    kinds = [np.dtype(d["dtype"]) for d in details if np.dtype(d["dtype"]).kind in "iuf"]
    quantized = [d for d in details if d["quantization"][0] and np.dtype(d["dtype"]) in (np.int8, np.uint8)]
    io_quantized = [d for d in quantized if int(d["index"]) in io]
    floats = [k for k in kinds if k == np.float32]
    if io_quantized or (quantized and len(quantized) * 2 > len(floats)):
        return "tflite_int8"
    if quantized:
        return "tflite_dynamic_int8"
    if any(k == np.float16 for k in kinds):
        return "tflite_fp16"
    return "tflite_fp32"


def load_tflite(path: Path, signature: str | None) -> SourceModel:
    from converter.measure import LiteRTRunner

    raw = path.read_bytes()
    try:
        from ai_edge_litert.interpreter import Interpreter

        with silenced():
            interp = Interpreter(model_content=raw)
            interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise ModelLoadError(f"{path.name}: LiteRT cannot load it: {str(e).strip().splitlines()[0][:300]}") from e
    try:
        chosen = choose_signature(list(interp.get_signature_list()), signature)
    except SignatureChoiceError as e:
        raise ModelLoadError(f"{path.name}: {e}") from e
    runner = LiteRTRunner(raw, 1, signature=chosen)
    # The source's own view: quantized I/O is fed and read as floats (the runner quantises), others as they are.
    inputs = [
        TensorSpec(name=s.name, shape=s.shape, dtype="float32" if s.quantization else s.dtype) for s in runner.inputs
    ]
    output_names = [s.name for s in runner.outputs]
    quantized_io = any(s.quantization is not None for s in (*runner.inputs, *runner.outputs))
    return SourceModel("tflite", path, inputs, output_names, runner.run, max_batch=runner.max_batch,
                       tflite_route="artifact", ready_kind=tflite_kind(interp), ready_bytes=raw, signature=chosen,
                       onnx_factory=None if quantized_io else lambda: _tflite_to_onnx(path),
                       onnx_refusal=QUANTIZED_IO if quantized_io else "")


QUANTIZED_IO = (
    "a TFLite model with quantised (int8/uint8) inputs or outputs has no ONNX equivalent here: tf2onnx would give "
    "integer inputs without their scale and zero point"
)


def _tflite_to_onnx(path: Path) -> bytes:
    """tf2onnx's TFLite reader, for ONNX profiles and the Triton / KServe export."""
    import subprocess
    import sys
    import tempfile

    from converter.errors import ConversionFailed
    from converter.sources.base import ONNX_OPSET

    with tempfile.TemporaryDirectory(prefix="edgefleet-tflite2onnx-") as tmp:
        out = Path(tmp, "model.onnx")
        cmd = [sys.executable, "-m", "tf2onnx.convert", "--tflite", str(path), "--opset", str(ONNX_OPSET),
               "--output", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not out.exists():
            lines = [ln for ln in (done.stderr or "").splitlines() if "Error" in ln or "error" in ln]
            raise ConversionFailed(f"tf2onnx cannot read this TFLite model: {(lines or ['(no message)'])[-1][:300]}")
        return out.read_bytes()
