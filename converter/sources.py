"""Load the trained model into a float reference: Keras, SavedModel, ONNX, or PyTorch (exported to ONNX)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from converter.errors import ConversionFailed, ModelLoadError

SourceKind = Literal["keras", "savedmodel", "onnx", "torch"]
ONNX_OPSET = 17


def quiet_tensorflow() -> Any:
    """Import TensorFlow with its start-up chatter turned down."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with silenced():  # absl prints oneDNN notices to fd 2 at import, whatever the log level
        import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Send TensorFlow's C++ and Python chatter (fd 1 and 2) to /dev/null unless EDGEFLEET_VERBOSE is set."""
    if os.environ.get("EDGEFLEET_VERBOSE"):
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


@dataclass
class SourceModel:
    """A trained float model, its I/O signature, and what it can be converted into."""

    kind: SourceKind
    path: Path
    input_shapes: dict[str, list[int | None]]
    output_names: list[str]
    predict: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    tf_model: Any = None  # Keras model or loaded SavedModel (enables TFLite)
    torch_module: Any = None  # enables the TorchServe export
    _onnx: bytes | None = field(default=None, repr=False)
    onnx_factory: Callable[[], bytes] | None = field(default=None, repr=False)

    @property
    def can_tflite(self) -> bool:
        return self.tf_model is not None

    def onnx_bytes(self) -> bytes:
        """The float ONNX model (converted once, on first use)."""
        if self._onnx is None:
            if self.onnx_factory is None:
                raise ConversionFailed(f"{self.kind} model cannot be converted to ONNX")
            try:
                with silenced():
                    self._onnx = self.onnx_factory()
            except Exception as e:
                raise ConversionFailed(f"ONNX export failed: {type(e).__name__}: {_first_line(e)}") from e
        return self._onnx


def detect_kind(path: Path) -> SourceKind:
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return "savedmodel"
        raise ModelLoadError(f"{path}: a directory but not a SavedModel (no saved_model.pb)")
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".keras", ".h5"):
        return "keras"
    if suffix == ".onnx":
        return "onnx"
    if suffix in (".pt", ".pth", ".torchscript"):
        return "torch"
    raise ModelLoadError(f"{path}: unknown model type {suffix!r} (use .keras, .onnx, .pt or a SavedModel dir)")


def load_source(path: Path, input_shape: list[int] | None = None) -> SourceModel:
    """Load any supported model; `ModelLoadError` with one readable line when it cannot.

    `input_shape` (per sample, no batch) is needed only for PyTorch modules that do not carry
    an `edgefleet_input_shape` attribute.
    """
    kind = detect_kind(path)
    try:
        with silenced():
            if kind == "torch":
                return _load_torch(path, input_shape)
            return {"keras": _load_keras, "savedmodel": _load_savedmodel, "onnx": _load_onnx}[kind](path)
    except ModelLoadError:
        raise
    except Exception as e:  # every framework raises its own types for a corrupt file
        raise ModelLoadError(f"{path.name}: cannot load {kind} model: {type(e).__name__}: {_first_line(e)}") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""


def _shape(dims: Any) -> list[int | None]:
    return [None if (d is None or (isinstance(d, int) and d < 0)) else int(d) for d in dims]


def _load_keras(path: Path) -> SourceModel:
    quiet_tensorflow()
    import keras

    model = keras.models.load_model(path, compile=False)
    inputs = model.inputs
    input_shapes = {t.name: _shape(t.shape) for t in inputs}
    output_names = [f"output_{i}" for i in range(len(model.outputs))] if len(model.outputs) > 1 else ["output"]
    names = list(input_shapes)

    def predict(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [x[n] for n in names]
        out = model(args if len(args) > 1 else args[0], training=False)
        outs = out if isinstance(out, (list, tuple)) else [out]
        return {n: np.asarray(o, dtype=np.float32) for n, o in zip(output_names, outs, strict=True)}

    def to_onnx() -> bytes:
        tf = quiet_tensorflow()
        import tf2onnx

        model.output_names = list(output_names)  # tf2onnx on Keras 3 needs it (FACTS.md)
        spec = tuple(tf.TensorSpec([None, *s[1:]], tf.float32, name=n) for n, s in input_shapes.items())
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=ONNX_OPSET)
        return bytes(proto.SerializeToString())

    return SourceModel("keras", path, input_shapes, output_names, predict, tf_model=model, onnx_factory=to_onnx)


def _load_savedmodel(path: Path) -> SourceModel:
    tf = quiet_tensorflow()
    loaded = tf.saved_model.load(str(path))
    sigs = getattr(loaded, "signatures", {})
    if "serving_default" not in sigs:
        raise ModelLoadError(f"{path}: SavedModel has no serving_default signature")
    fn = sigs["serving_default"]
    arg_specs = fn.structured_input_signature[1]
    input_shapes = {n: _shape(s.shape.as_list()) for n, s in sorted(arg_specs.items())}
    output_names = sorted(fn.structured_outputs)

    def predict(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = fn(**{n: tf.constant(v) for n, v in x.items()})
        return {n: np.asarray(out[n], dtype=np.float32) for n in output_names}

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

    return SourceModel("savedmodel", path, input_shapes, output_names, predict, tf_model=loaded, onnx_factory=to_onnx)


def _load_onnx(path: Path) -> SourceModel:
    import onnx
    import onnxruntime as ort

    raw = path.read_bytes()
    proto = onnx.load_from_string(raw)
    onnx.checker.check_model(proto)
    sess = ort.InferenceSession(raw, providers=["CPUExecutionProvider"])
    input_shapes = {i.name: _shape([d if isinstance(d, int) else None for d in i.shape]) for i in sess.get_inputs()}
    output_names = [o.name for o in sess.get_outputs()]

    def predict(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = sess.run(output_names, x)
        return {n: np.asarray(o, dtype=np.float32) for n, o in zip(output_names, outs, strict=True)}

    return SourceModel("onnx", path, input_shapes, output_names, predict, _onnx=raw)


def _load_torch(path: Path, input_shape: list[int] | None) -> SourceModel:
    """TorchScript (torch.jit.save) or a whole pickled nn.Module (torch.save); needs an input shape hint."""
    import torch

    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError:
        module = torch.load(str(path), map_location="cpu", weights_only=False)
    if not isinstance(module, torch.nn.Module):
        raise ModelLoadError(f"{path.name}: holds a {type(module).__name__}, not a torch.nn.Module (save the module)")
    module.eval()
    hint = input_shape or getattr(module, "edgefleet_input_shape", None)
    if hint is None:
        raise ModelLoadError(
            f"{path.name}: pass --input-shape C,H,W or set `module.edgefleet_input_shape` before saving"
        )
    input_shapes = {"input": [None, *[int(d) for d in hint]]}
    output_names = ["output"]

    def predict(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            out = module(torch.from_numpy(np.ascontiguousarray(x["input"])))
        return {"output": out.numpy().astype(np.float32)}

    def to_onnx() -> bytes:
        buf = io.BytesIO()
        sample = torch.zeros([1, *input_shapes["input"][1:]], dtype=torch.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter warns it is legacy; it needs no onnxscript
            torch.onnx.export(
                module, (sample,), buf, input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, opset_version=ONNX_OPSET, dynamo=False,
            )
        return buf.getvalue()

    return SourceModel("torch", path, input_shapes, output_names, predict, torch_module=module, onnx_factory=to_onnx)
