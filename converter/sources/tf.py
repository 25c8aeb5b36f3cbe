"""TensorFlow sources: a Keras model (`.keras`, `.h5`) or a SavedModel directory (`serving_default`)."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from converter.errors import ConversionFailed, ModelLoadError
from converter.sources.base import ONNX_OPSET, SourceModel, dims, quiet_tensorflow
from protocol.manifest import TensorSpec


def _dtype(tf_dtype: object) -> str:
    name = getattr(tf_dtype, "name", str(tf_dtype))
    return {"float64": "float64", "int32": "int32", "int64": "int64", "bool": "bool", "uint8": "uint8"}.get(
        name, "float32"
    )


def load_keras(path: Path) -> SourceModel:
    quiet_tensorflow()
    import keras

    if path.suffix == ".keras" and not zipfile.is_zipfile(path):
        # Keras says "File not found" for a file that is there but is not the zip a .keras file is.
        raise ModelLoadError(
            f"{path.name}: not a Keras v3 model file (a .keras file is a zip archive; this one is damaged or "
            "something else renamed); save it again with model.save('model.keras')"
        )
    model = keras.models.load_model(path, compile=False)
    inputs = [TensorSpec(name=t.name, shape=dims(t.shape), dtype=_dtype(t.dtype)) for t in model.inputs]  # type: ignore[arg-type]
    output_names = [f"output_{i}" for i in range(len(model.outputs))] if len(model.outputs) > 1 else ["output"]
    names = [s.name for s in inputs]

    def predict(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [x[n] for n in names]
        out = model(args if len(args) > 1 else args[0], training=False)
        outs = out if isinstance(out, (list, tuple)) else [out]
        return {n: np.asarray(o) for n, o in zip(output_names, outs, strict=True)}

    def to_onnx() -> bytes:
        tf = quiet_tensorflow()
        import tf2onnx

        model.output_names = list(output_names)  # tf2onnx on Keras 3 needs it (FACTS.md)
        spec = tuple(tf.TensorSpec([None, *s.shape[1:]], s.dtype, name=s.name) for s in inputs)
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=ONNX_OPSET)
        return bytes(proto.SerializeToString())

    return SourceModel("keras", path, inputs, output_names, predict, tflite_route="tf", tf_model=model,
                       onnx_factory=to_onnx)


def load_savedmodel(path: Path) -> SourceModel:
    tf = quiet_tensorflow()
    loaded = tf.saved_model.load(str(path))
    sigs = getattr(loaded, "signatures", {})
    if "serving_default" not in sigs:
        raise ModelLoadError(f"{path}: SavedModel has no serving_default signature")
    fn = sigs["serving_default"]
    arg_specs = fn.structured_input_signature[1]
    inputs = [
        TensorSpec(name=n, shape=dims(s.shape.as_list()), dtype=_dtype(s.dtype))  # type: ignore[arg-type]
        for n, s in sorted(arg_specs.items())
    ]
    output_names = sorted(fn.structured_outputs)

    def predict(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = fn(**{n: tf.constant(v) for n, v in x.items()})
        return {n: np.asarray(out[n]) for n in output_names}

    def to_onnx() -> bytes:
        # tf2onnx's saved-model path (FACTS.md: the documented route that works on a loaded signature).
        with tempfile.TemporaryDirectory(prefix="edgefleet-tf2onnx-") as tmp:
            out = Path(tmp, "model.onnx")
            cmd = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(path),
                   "--opset", str(ONNX_OPSET), "--output", str(out)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0 or not out.exists():
                raise ConversionFailed(f"tf2onnx: {(done.stderr or '').strip().splitlines()[-1:]}")
            return out.read_bytes()

    return SourceModel("savedmodel", path, inputs, output_names, predict, tflite_route="tf", tf_model=loaded,
                       onnx_factory=to_onnx)
