"""Conversion routes: how each artifact kind is built from a source, one module per route.

    TFLite from Keras / SavedModel          tf_tflite     (tf.lite.TFLiteConverter)
    TFLite from an nn.Module / .pt2         torch_tflite  (litert-torch, then ai-edge-quantizer)
    TFLite from ONNX (and scikit-learn)     onnx_tflite   (onnx2tf, then ai-edge-quantizer)
    ONNX variants of the float ONNX         onnx_quant    (onnxruntime.quantization)
    a ready-made .tflite / .onnx            shipped byte for byte; re-quantised only with --requantize

Artifacts may name tensors otherwise than the source (`output_0`, `serving_default_x:0`): `match_names`
maps them back, and the manifest keeps both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from converter.data import Dataset
from converter.errors import ConversionFailed
from converter.sources.base import SourceModel
from protocol.manifest import ModelFormat, Quantization
from protocol.signatures import plain_tensor_name


@dataclass(frozen=True)
class Routed:
    """What a route built: the artifact; the map of its tensor names to the source's when the route knows it
    better than `match_names` (None); the layout it kept for image-like inputs (onnx2tf: channels first)."""

    model: bytes
    names: dict[str, str] | None = None
    layouts: dict[str, str] = field(default_factory=dict)


def split_kind(kind: str) -> tuple[ModelFormat, Quantization]:
    fmt, quant = kind.split("_", 1)
    return ModelFormat(fmt), Quantization(quant)


def build(source: SourceModel, kind: str, io_dtype: str, calibration: Dataset, requantize: bool) -> Routed:
    """The artifact of `kind` for `source`; ConversionFailed with one line when this source cannot give it."""
    fmt, quant = split_kind(kind)
    ready = source.ready_kind
    if ready is not None and split_kind(ready)[0] is fmt:
        return Routed(_from_ready(source, kind, quant, io_dtype, calibration, requantize))
    if fmt is ModelFormat.ONNX:
        from converter.routes.onnx_quant import build_onnx

        if not source.can_onnx:
            raise ConversionFailed(source.onnx_refusal or f"a {source.kind} model cannot be converted to ONNX")
        fp32 = source.onnx_bytes()
        return Routed(build_onnx(fp32, quant, calibration, _onnx_keys(source, fp32)))
    if source.tflite_route == "tf":
        from converter.routes.tf_tflite import build_tf_tflite

        return Routed(build_tf_tflite(source, quant, calibration, io_dtype))
    if source.tflite_route == "litert_torch":
        from converter.routes.torch_tflite import build_torch_tflite

        return Routed(build_torch_tflite(source, quant, calibration, io_dtype))
    if source.tflite_route == "onnx2tf":
        from converter.routes.onnx_tflite import build_onnx_tflite

        model, names, layouts = build_onnx_tflite(source, quant, calibration, io_dtype)
        return Routed(model, names, layouts)
    raise ConversionFailed(source.tflite_refusal or f"a {source.kind} model cannot be converted to TFLite")


def _from_ready(source: SourceModel, kind: str, quant: Quantization, io_dtype: str, calibration: Dataset,
                requantize: bool) -> bytes:
    """A ready-made artifact: itself when it is the kind asked for, else re-quantised from float when asked."""
    assert source.ready_kind is not None and source.ready_bytes is not None
    ready_io = _ready_io(source)
    if kind == source.ready_kind:
        if io_dtype != ready_io:
            raise ConversionFailed(f"the ready-made {kind} artifact has {ready_io} I/O; this profile needs {io_dtype}")
        return source.ready_bytes
    if not requantize:
        raise ConversionFailed(f"the ready-made {source.ready_kind} artifact is shipped as it is (--requantize to "
                               f"make {kind} from it)")
    if not source.ready_kind.endswith("_fp32"):
        raise ConversionFailed(f"only a float (fp32) artifact can be re-quantised; this one is {source.ready_kind}")
    fmt = split_kind(kind)[0]
    if fmt is ModelFormat.ONNX:
        from converter.routes.onnx_quant import build_onnx

        return build_onnx(source.ready_bytes, quant, calibration, {})
    from converter.routes.tflite_quant import quantize_tflite

    if source.signature is None:
        raise ConversionFailed("a TFLite model without a signature cannot be re-quantised")
    return quantize_tflite(source.ready_bytes, quant, calibration, io_dtype, source.signature, {})


def _onnx_keys(source: SourceModel, model: bytes) -> dict[str, str]:
    """source input name -> the ONNX model's (an export may name them otherwise: `serving_default_x:0`)."""
    import onnx

    graph = onnx.load_from_string(model).graph
    constants = {t.name for t in graph.initializer}
    names = [i.name for i in graph.input if i.name not in constants]
    mapped = match_names([s.name for s in source.inputs], names, "input")
    return {mapped.get(n, n): n for n in names}


def _ready_io(source: SourceModel) -> str:
    """The I/O dtype of a ready-made int8 TFLite artifact (its quantised inputs), else float32."""
    if source.ready_kind != "tflite_int8" or source.ready_bytes is None:
        return "float32"
    from converter.measure import LiteRTRunner

    runner = LiteRTRunner(source.ready_bytes, 1, signature=source.signature)
    quantized = {s.dtype for s in runner.inputs if s.quantization is not None}
    return quantized.pop() if len(quantized) == 1 else "float32"


def _order(name: str) -> tuple[str, int]:
    found = re.fullmatch(r"(.*?)(\d+)", name)
    return (found.group(1), int(found.group(2))) if found else (name, -1)


def match_names(source: list[str], artifact: list[str], what: str) -> dict[str, str]:
    """artifact name -> source name: the same names; names without TensorFlow's `serving_default_` / `:0`; or,
    when the artifact numbers its tensors (`output_0`, `args_1`), in that order."""
    if sorted(source) == sorted(artifact):
        return {}
    plain = {plain_tensor_name(a): a for a in artifact}
    if len(plain) == len(artifact) and sorted(plain) == sorted(source):
        return {a: p for p, a in plain.items()}
    if len(source) != len(artifact):
        raise ConversionFailed(f"the artifact has {len(artifact)} {what}s, the source model {len(source)}")
    return dict(zip(sorted(artifact, key=_order), source, strict=True))
