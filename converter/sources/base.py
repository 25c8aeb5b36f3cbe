"""What every source loader returns: a float reference of the trained model and what it can become."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from converter.errors import ConversionFailed
from protocol.manifest import SourceRef, TensorSpec

SourceKind = Literal["keras", "savedmodel", "onnx", "torchscript", "torch", "torch_export", "sklearn", "tflite"]
# How TFLite artifacts are built from a source: TensorFlow's converter, litert-torch, onnx2tf, or the ready file.
TFLiteRoute = Literal["tf", "litert_torch", "onnx2tf", "artifact"]
ONNX_OPSET = 17


def quiet_tensorflow() -> Any:
    """Import TensorFlow with its start-up chatter turned down."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with silenced():  # absl prints oneDNN notices to fd 2 at import, whatever the log level
        import tensorflow as tf

        # The first look at devices logs an ERROR line on a machine without CUDA ("failed call to cuInit"),
        # once per process: taken here, under the silence, so it never reaches a user's terminal or log.
        tf.config.list_physical_devices("GPU")

    tf.get_logger().setLevel("ERROR")
    return tf


@contextlib.contextmanager
def silenced(log: Path | None = None) -> Iterator[None]:
    """Send converters' C++ and Python chatter (fd 1 and 2) to `log`, or to /dev/null, unless EDGEFLEET_VERBOSE
    is set."""
    if os.environ.get("EDGEFLEET_VERBOSE"):
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    sink = os.open(log if log is not None else os.devnull, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.dup2(sink, 1)
        os.dup2(sink, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, sink):
            os.close(fd)


def first_line(e: BaseException, limit: int = 300) -> str:
    text = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return text[0][:limit] if text else type(e).__name__


def dims(values: Any) -> list[int | None]:
    """A shape with unknown / symbolic / negative dims as None."""
    return [int(d) if isinstance(d, (int, np.integer)) and d >= 1 else None for d in values]


@dataclass
class SourceModel:
    """A trained model, its I/O signature under its own names, a float reference, and what it can become.

    `predict` takes and gives arrays under the source's names. `tflite_route` says how TFLite artifacts are
    built (None: they cannot be, and `tflite_refusal` says why in one line); `onnx_factory` gives the float
    ONNX model (the ONNX artifacts' base and the Triton / KServe export). A ready-made artifact (`.tflite`,
    `.onnx`) is its own candidate: `ready_kind` names its kind and `ready_bytes` holds it byte for byte.
    """

    kind: SourceKind
    path: Path
    inputs: list[TensorSpec]
    output_names: list[str]
    predict: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]
    max_batch: int | None = None
    tflite_route: TFLiteRoute | None = None
    tflite_refusal: str = ""
    onnx_refusal: str = ""  # why there is no ONNX model of it, when there cannot be
    tf_model: Any = None  # Keras model or loaded SavedModel (TF route, TF Serving export)
    torch_module: Any = None  # nn.Module (litert-torch route, TorchServe export)
    ready_kind: str | None = None
    ready_bytes: bytes | None = field(default=None, repr=False)
    signature: str | None = None  # the TFLite signature of a ready-made artifact
    labels: list[str] | None = None  # class names the model itself knows (a scikit-learn classifier's classes_)
    ref: SourceRef | None = None
    _onnx: bytes | None = field(default=None, repr=False)
    onnx_factory: Callable[[], bytes] | None = field(default=None, repr=False)

    @property
    def input_shapes(self) -> dict[str, list[int | None]]:
        return {s.name: list(s.shape) for s in self.inputs}

    @property
    def can_tflite(self) -> bool:
        return self.tflite_route is not None

    @property
    def can_onnx(self) -> bool:
        return self._onnx is not None or self.onnx_factory is not None

    def onnx_bytes(self) -> bytes:
        """The float ONNX model (converted once, on first use)."""
        if self._onnx is None:
            if self.onnx_factory is None:
                raise ConversionFailed(self.onnx_refusal or f"a {self.kind} model cannot be converted to ONNX here")
            try:
                with silenced():
                    self._onnx = self.onnx_factory()
            except ConversionFailed:
                raise
            except Exception as e:
                raise ConversionFailed(f"ONNX export failed: {type(e).__name__}: {first_line(e)}") from e
        return self._onnx
