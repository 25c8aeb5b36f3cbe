"""ONNX (and scikit-learn through skl2onnx) -> TFLite with onnx2tf.

One onnx2tf run per source gives every TFLite kind: float32, float16, dynamic-range, and full-integer int8
calibrated on the calibration data (float and int8 I/O). The graph is first rewritten into a form onnx2tf
converts (`onnx_prep`: static shapes of one sample, batch 1); inputs of rank 3-5 keep the source's layout
(NCHW stays NCHW), so one dataset feeds the source and every artifact. The float32 model must reproduce
onnxruntime on calibration samples, or the graph as it came is tried, or the kind is refused with the reason.
Each file's tensors are mapped back to the source's names by their values. onnx2tf rewrites its input file
and prints on both fds: it runs on a copy, in a temporary folder, silenced.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converter.data import Dataset, Feed
from converter.errors import ConversionFailed
from converter.sources.base import SourceModel, silenced
from protocol.manifest import Quantization
from protocol.signatures import plain_tensor_name

FILES = {
    (Quantization.FP32, "float32"): "model_float32.tflite",
    (Quantization.FP16, "float32"): "model_float16.tflite",
    (Quantization.DYNAMIC_INT8, "float32"): "model_dynamic_range_quant.tflite",
    (Quantization.INT8, "float32"): "model_integer_quant.tflite",  # int8 inside, float32 I/O
    (Quantization.INT8, "int8"): "model_full_integer_quant.tflite",  # int8 I/O
}
FP32 = FILES[(Quantization.FP32, "float32")]
CALIBRATION_SAMPLES = 200
CHECK_SAMPLES = 4  # calibration samples the float32 model must reproduce (onnxruntime on the source) ...
MATCH = 1e-3  # ... within this share of max(1, max |output|)


@dataclass(frozen=True)
class Onnx2tfRun:
    """What one onnx2tf run gave: each usable file with its names map, why the others are missing, and the
    layout kept for each rank 3-5 input (onnx2tf was told they are channels first)."""

    files: dict[str, tuple[bytes, dict[str, str]]]
    missing: dict[str, str]
    layouts: dict[str, str]


CHANNELS_FIRST = {3: "NCW", 4: "NCHW", 5: "NCDHW"}


_runs: dict[str, Onnx2tfRun | ConversionFailed] = {}  # sha256 of the ONNX + calibration shapes -> outcome


def build_onnx_tflite(source: SourceModel, quant: Quantization, calibration: Dataset,
                      io_dtype: str) -> tuple[bytes, dict[str, str], dict[str, str]]:
    """The TFLite artifact of `quant` (and I/O dtype), its names map and the layouts it kept, from the source's
    float ONNX model."""
    run = _convert_once(source.onnx_bytes(), calibration)
    name = FILES.get((quant, "int8" if io_dtype == "uint8" else io_dtype), "")
    if name not in run.files:
        raise ConversionFailed(run.missing.get(name, f"onnx2tf gives no {quant.value} model with {io_dtype} I/O"))
    model, names = run.files[name]
    if io_dtype == "uint8":
        from converter.routes.tflite_quant import uint8_io

        return uint8_io(model), names, run.layouts
    return model, names, run.layouts


def _convert_once(fp32: bytes, calibration: Dataset) -> Onnx2tfRun:
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


def _convert(fp32: bytes, calibration: Dataset) -> Onnx2tfRun:
    """onnx2tf on the prepared graph, then on the graph as it came; the first whose float32 model reproduces
    onnxruntime wins."""
    import onnx

    from converter.routes.onnx_prep import prepare

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with silenced():  # importing onnx2tf imports TensorFlow, whose C++ logs go to fd 2
        import onnx2tf  # noqa: F401
    bad = unsupported_ops(onnx.load_from_string(fp32))
    if bad:
        op, domain, node = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ConversionFailed(f"onnx2tf does not support op {op} (domain {domain}) at node {node!r}{more}")
    checks = [calibration.take(i, i + 1) for i in range(min(CHECK_SAMPLES, len(calibration)))]
    try:
        reference = _onnx_outputs(fp32, checks)
    except Exception as e:  # onnxruntime's own types: the data does not fit the graph
        raise ConversionFailed(f"onnxruntime cannot run the source on the calibration data: {e}") from e
    first: ConversionFailed | None = None
    for rewrite in (True, False):
        try:
            if rewrite:
                prepared = prepare(fp32, {k: list(np.shape(v)) for k, v in checks[0].items()})
                graph, renamed = prepared.model, prepared.renamed
            else:
                graph, renamed = fp32, {}
            files, error = _onnx2tf(graph, calibration, renamed, simplified=rewrite)
            layouts = {k: CHANNELS_FIRST[np.ndim(v)] for k, v in checks[0].items() if np.ndim(v) in CHANNELS_FIRST}
            return _checked(files, error, renamed, checks, reference, layouts)
        except ConversionFailed as e:
            first = first or e
        except Exception as e:  # a rewrite or a check tripped over this graph: try it as it came, then say why
            first = first or ConversionFailed(f"onnx2tf route: {type(e).__name__}: {str(e).splitlines()[0][:300]}")
    assert first is not None
    raise first


def _onnx_outputs(fp32: bytes, feeds: list[Feed]) -> list[dict[str, np.ndarray]]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(fp32, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(names, feed), strict=True)) for feed in feeds]


def _onnx2tf(graph: bytes, calibration: Dataset, renamed: dict[str, str],
             simplified: bool) -> tuple[dict[str, bytes], str | None]:
    """The .tflite files one run wrote, and the error that stopped it (after float32 was written, the others
    may still be missing). A graph `onnx_prep` simplified already is not simplified again (onnx2tf runs
    onnxsim three times, ~3 s each)."""
    import onnx

    proto = onnx.load_from_string(graph)
    constants = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in constants]
    keep = [i.name for i in inputs if len(i.type.tensor_type.shape.dim) in (3, 4, 5)]
    back = {v: k for k, v in renamed.items()}
    with tempfile.TemporaryDirectory(prefix="edgefleet-onnx2tf-") as tmp:
        src = Path(tmp, "model.onnx")
        src.write_bytes(graph)
        out = Path(tmp, "out")
        calib = []
        n = min(len(calibration), CALIBRATION_SAMPLES)
        for i, spec in enumerate(inputs):
            source_name = back.get(spec.name, spec.name)
            if source_name not in calibration.inputs:
                raise ConversionFailed(f"no calibration data for the ONNX input {source_name!r}")
            path = Path(tmp, f"calibration_{i}.npy")
            # In the input's own dtype: onnx2tf also runs these through onnxruntime to check its layout choices,
            # and int64 ids given as float32 there make it pick wrongly (a wrong model, no error).
            np.save(path, np.asarray(calibration.inputs[source_name][:n]))
            calib.append([spec.name, str(path), np.zeros(1, np.float32), np.ones(1, np.float32)])  # raw values
        args: dict[str, Any] = {
            "input_onnx_file_path": str(src), "output_folder_path": str(out), "non_verbose": True,
            "keep_ncw_or_nchw_or_ncdhw_input_names": keep or None, "output_integer_quantized_tflite": True,
            "custom_input_op_name_np_data_path": calib, "input_quant_dtype": "int8", "output_quant_dtype": "int8",
            "not_use_onnxsim": simplified,
        }
        log = Path(tmp, "onnx2tf.log")
        error = None
        try:
            with silenced(log), _bin_on_path():
                import onnx2tf

                onnx2tf.convert(**args)
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # onnx2tf raises every type there is, or calls sys.exit(1)
            error = _reason(e, log)
        files = {p.name: p.read_bytes() for p in out.glob("*.tflite")} if out.exists() else {}
    if FP32 not in files:
        raise ConversionFailed(error or "onnx2tf wrote no float32 TFLite model")
    return files, error


def _checked(files: dict[str, bytes], error: str | None, renamed: dict[str, str], checks: list[Feed],
             reference: list[dict[str, np.ndarray]], layouts: dict[str, str]) -> Onnx2tfRun:
    """Each file run on the check samples: names mapped to the source's by value; the float32 one must match."""
    from converter.measure import LiteRTRunner

    usable: dict[str, tuple[bytes, dict[str, str]]] = {}
    missing: dict[str, str] = {}
    for name in FILES.values():
        if name not in files:
            missing[name] = f"onnx2tf wrote no {name}" + (f" ({error})" if error else "")
            continue
        try:
            runner = LiteRTRunner(files[name], 1)
            inputs = _input_names(runner, renamed, list(checks[0]))
            outs = [runner.run(_by_artifact(feed, inputs)) for feed in checks]
            names = {**inputs, **_output_names(outs[0], reference[0])}
        except ConversionFailed as e:
            missing[name] = f"onnx2tf's {name} does not run: {e}"
            continue
        if name == FP32:
            worst = max(_error(out, ref, names) for out, ref in zip(outs, reference, strict=True))
            scale = max(1.0, max(float(np.max(np.abs(v))) for v in reference[0].values()))
            if worst > MATCH * scale:
                raise ConversionFailed(f"onnx2tf's float32 model differs from the ONNX model by {worst:.3g} "
                                       f"(outputs up to {scale:.3g}): a wrong conversion, refused")
        usable[name] = (files[name], names)
    return Onnx2tfRun(usable, missing, layouts)


def _input_names(runner: Any, renamed: dict[str, str], source: list[str]) -> dict[str, str]:
    """artifact input name -> source name (onnx2tf keeps the graph's names, perhaps behind `serving_default_` and
    before `:0`)."""
    back = {v: k for k, v in renamed.items()}
    found = {}
    for spec in runner.inputs:
        name = spec.name
        for candidate in (name, re.sub(r":\d+$", "", name), plain_tensor_name(name)):
            if candidate in back or candidate in source:
                found[name] = back.get(candidate, candidate)
                break
        else:
            raise ConversionFailed(f"onnx2tf's input {name!r} matches no input of the source ({', '.join(source)})")
    return found


def _by_artifact(feed: Feed, inputs: dict[str, str]) -> Feed:
    """A source-named feed under the runner's own names (the runner was made without a names map)."""
    source_to_artifact = {v: k for k, v in inputs.items()}
    return {source_to_artifact.get(k, k): v for k, v in feed.items()}


def _output_names(outs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, str]:
    """artifact output name -> source output name: the source output of the same shape it is closest to."""
    names: dict[str, str] = {}
    free = dict(reference)
    for name, value in outs.items():
        same = [k for k, v in free.items() if np.size(v) == np.size(value)]
        if not same:
            raise ConversionFailed(f"onnx2tf's output {name!r} {list(np.shape(value))} matches no output of the source")
        best = min(same, key=lambda k: float(np.max(np.abs(free[k].astype(np.float64).ravel() - value.ravel()))))
        names[name] = best
        del free[best]
    return names


def _error(out: dict[str, np.ndarray], ref: dict[str, np.ndarray], names: dict[str, str]) -> float:
    return max(float(np.max(np.abs(v.astype(np.float64).ravel() - ref[names[k]].astype(np.float64).ravel())))
               for k, v in out.items())


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
def _bin_on_path() -> Iterator[None]:
    """onnx2tf runs `onnxsim` as a command: the one installed beside this interpreter."""
    before = os.environ.get("PATH", "")
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + before
    try:
        yield
    finally:
        os.environ["PATH"] = before
