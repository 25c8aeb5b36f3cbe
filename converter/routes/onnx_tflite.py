"""ONNX (and scikit-learn through skl2onnx) -> TFLite with onnx2tf.

One onnx2tf run per source gives every TFLite kind: float32, float16, dynamic-range, and full-integer int8
calibrated on the calibration data (float and int8 I/O). Inputs of rank 3-5 keep the source's layout (NCHW
stays NCHW: `keep_ncw_or_nchw_or_ncdhw_input_names`), so one dataset feeds the source and every artifact;
an output onnx2tf turns channels-last is caught when the artifact is measured against the source.
onnx2tf rewrites its input file and prints on both fds: it runs on a copy, in a temporary folder, silenced.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from converter.data import Dataset
from converter.errors import ConversionFailed
from converter.sources.base import SourceModel, silenced
from protocol.manifest import Quantization

FILES = {
    (Quantization.FP32, "float32"): "model_float32.tflite",
    (Quantization.FP16, "float32"): "model_float16.tflite",
    (Quantization.DYNAMIC_INT8, "float32"): "model_dynamic_range_quant.tflite",
    (Quantization.INT8, "float32"): "model_integer_quant.tflite",  # int8 inside, float32 I/O
    (Quantization.INT8, "int8"): "model_full_integer_quant.tflite",  # int8 I/O
}
CALIBRATION_SAMPLES = 200
_runs: dict[str, dict[str, bytes] | ConversionFailed] = {}  # sha256 of the ONNX + calibration -> files or failure


def build_onnx_tflite(source: SourceModel, quant: Quantization, calibration: Dataset, io_dtype: str) -> bytes:
    """The TFLite artifact of `quant` (and I/O dtype) from the source's float ONNX model."""
    fp32 = source.onnx_bytes()
    files = _convert_once(fp32, calibration)
    if io_dtype == "uint8" and quant is Quantization.INT8:
        from converter.routes.tflite_quant import uint8_io

        return uint8_io(files[FILES[(quant, "int8")]])
    name = FILES.get((quant, io_dtype))
    if name is None or name not in files:
        raise ConversionFailed(f"onnx2tf gave no {quant.value} model with {io_dtype} I/O")
    return files[name]


def _convert_once(fp32: bytes, calibration: Dataset) -> dict[str, bytes]:
    key = hashlib.sha256(fp32 + repr(sorted((k, v.shape) for k, v in calibration.inputs.items())).encode()).hexdigest()
    if key not in _runs:
        try:
            _runs[key] = _convert(fp32, calibration)
        except ConversionFailed as e:
            _runs[key] = e
    done = _runs[key]
    if isinstance(done, ConversionFailed):
        raise done
    return done


def unsupported_ops(proto: Any) -> list[tuple[str, str, str]]:
    """(op, domain, node) of top-level nodes onnx2tf has no converter for (it looks ops up by type only)."""
    bad = []
    for node in proto.graph.node:
        if importlib.util.find_spec(f"onnx2tf.ops.{node.op_type}") is None:
            bad.append((node.op_type, node.domain or "ai.onnx", node.name))
    return bad


def _convert(fp32: bytes, calibration: Dataset) -> dict[str, bytes]:
    import onnx

    proto = onnx.load_from_string(fp32)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with silenced():  # importing onnx2tf imports TensorFlow, whose C++ logs go to fd 2
        import onnx2tf
    bad = unsupported_ops(proto)
    if bad:
        op, domain, node = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ConversionFailed(f"onnx2tf does not support op {op} (domain {domain}) at node {node!r}{more}")
    constants = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in constants]
    keep = [i.name for i in inputs if len(i.type.tensor_type.shape.dim) in (3, 4, 5)]
    with tempfile.TemporaryDirectory(prefix="edgefleet-onnx2tf-") as tmp:
        src = Path(tmp, "model.onnx")
        src.write_bytes(fp32)
        out = Path(tmp, "out")
        calib = []
        n = min(len(calibration), CALIBRATION_SAMPLES)
        for i, spec in enumerate(inputs):
            if spec.name not in calibration.inputs:
                raise ConversionFailed(f"no calibration data for the ONNX input {spec.name!r}")
            path = Path(tmp, f"calibration_{i}.npy")
            np.save(path, np.asarray(calibration.inputs[spec.name][:n], np.float32))
            calib.append([spec.name, str(path), np.zeros(1, np.float32), np.ones(1, np.float32)])  # raw values
        args: dict[str, Any] = {
            "input_onnx_file_path": str(src), "output_folder_path": str(out), "non_verbose": True,
            "keep_ncw_or_nchw_or_ncdhw_input_names": keep or None, "output_integer_quantized_tflite": True,
            "custom_input_op_name_np_data_path": calib, "input_quant_dtype": "int8", "output_quant_dtype": "int8",
        }
        log = Path(tmp, "onnx2tf.log")
        try:
            with _logged(log), _bin_on_path():
                import onnx2tf

                onnx2tf.convert(**args)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # onnx2tf raises every type there is, or calls sys.exit(1)
            raise ConversionFailed(_reason(e, log)) from None
        files = {p.name: p.read_bytes() for p in out.glob("*.tflite")}
    if FILES[(Quantization.FP32, "float32")] not in files:
        raise ConversionFailed("onnx2tf wrote no float32 TFLite model")
    return files


def _reason(e: BaseException, log: Path) -> str:
    """One line: the node onnx2tf stopped at and why."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", log.read_text(errors="replace")) if log.exists() else ""
    nodes = re.findall(r"onnx_op_name: (\S+)", text)
    said = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    errors = [ln[7:].strip() for ln in text.splitlines() if ln.startswith("ERROR: ") and "onnx_op_name" not in ln]
    why = said.splitlines()[0] if said else (errors[0] if errors else "")
    where = f" at node {nodes[-1]!r}" if nodes else ""
    return f"onnx2tf failed{where}: {type(e).__name__}: {why}"[:400]


@contextlib.contextmanager
def _logged(log: Path) -> Iterator[None]:
    """Both fds (onnx2tf's prints, TensorFlow's C++ logs) into `log` unless EDGEFLEET_VERBOSE is set."""
    if os.environ.get("EDGEFLEET_VERBOSE"):
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with log.open("w") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@contextlib.contextmanager
def _bin_on_path() -> Iterator[None]:
    """onnx2tf runs `onnxsim` as a command: the one installed beside this interpreter."""
    before = os.environ.get("PATH", "")
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + before
    try:
        yield
    finally:
        os.environ["PATH"] = before
