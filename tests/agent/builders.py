"""Tiny real models (ONNX via onnx.helper, TFLite via TensorFlow) and manifests that describe them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from agent.model import LoadedModel
from protocol.manifest import (
    ArtifactMetrics,
    ArtifactRef,
    BaselineStats,
    ConversionReport,
    GoldenCase,
    GoldenSet,
    HistogramBaseline,
    Manifest,
    ModelFormat,
    Quantization,
    QuantParams,
    Task,
    TensorSpec,
)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def onnx_linear(path: Path, n_in: int = 4, n_out: int = 3, seed: int = 0, poison: str | None = None) -> Path:
    """y = x @ W + b with a dynamic batch; `poison="nan"` multiplies by NaN, `"slow"` adds big matmuls."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n_in, n_out)).astype(np.float32)
    b = rng.normal(size=(n_out,)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y0"])]
    last = "y0"
    if poison == "nan":
        inits.append(numpy_helper.from_array(np.array([np.nan], np.float32), "N"))
        nodes.append(helper.make_node("Mul", [last, "N"], ["y1"]))
        last = "y1"
    if poison == "slow":
        big = rng.normal(size=(n_out, 512)).astype(np.float32) / 30
        back = rng.normal(size=(512, n_out)).astype(np.float32) / 30
        inits += [numpy_helper.from_array(big, "S1"), numpy_helper.from_array(back, "S2")]
        nodes += [helper.make_node("MatMul", [last, "S1"], ["s1"]), helper.make_node("MatMul", ["s1", "S2"], ["y1"])]
        last = "y1"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])],
        inits,
    )
    return _save(graph, path)


def onnx_multi(path: Path) -> Path:
    """Two inputs (a[N,2], b[N,3]) and two outputs: s = [a|b] @ W (N,2) and d = 2*b (N,3)."""
    w = np.arange(10, dtype=np.float32).reshape(5, 2) / 10
    nodes = [
        helper.make_node("Concat", ["a", "b"], ["ab"], axis=1),
        helper.make_node("MatMul", ["ab", "W"], ["s"]),
        helper.make_node("Add", ["b", "b"], ["d"]),
    ]
    graph = helper.make_graph(
        nodes,
        "multi",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 3]),
        ],
        [
            helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 2]),
            helper.make_tensor_value_info("d", TensorProto.FLOAT, ["N", 3]),
        ],
        [numpy_helper.from_array(w, "W")],
    )
    return _save(graph, path)


def tflite_models(out_dir: Path) -> dict[str, Path]:
    """Build a float dense model and a full-int8 (int8 I/O) model with TensorFlow; cached per directory."""
    paths = {
        "float": out_dir / "dense_f32.tflite",
        "int8": out_dir / "dense_int8.tflite",
        "multi": out_dir / "multi_f32.tflite",
    }
    if all(p.exists() for p in paths.values()):
        return paths
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential(
        [tf.keras.Input((6,), name="features"), tf.keras.layers.Dense(8, activation="relu"), tf.keras.layers.Dense(3)]
    )
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    paths["float"].write_bytes(conv.convert())
    rng = np.random.default_rng(1)

    def rep() -> object:
        for _ in range(32):
            yield [rng.normal(size=(1, 6)).astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    paths["int8"].write_bytes(conv.convert())
    a, b = tf.keras.Input((4,), name="a"), tf.keras.Input((3,), name="b")
    joined = tf.keras.layers.Concatenate()([a, b])
    two = tf.keras.Model([a, b], [tf.keras.layers.Dense(2, name="s")(joined), tf.keras.layers.Dense(5, name="t")(b)])
    paths["multi"].write_bytes(tf.lite.TFLiteConverter.from_keras_model(two).convert())
    return paths


def tflite_multi_signature(path: Path) -> Path:
    """A TFLite model with two signatures (`add`: a running total kept in a resource variable; `scale`: x * k for
    a 0-d int32 k, and whether each row has a positive value), built with TensorFlow."""
    from converter.sources import quiet_tensorflow

    tf = quiet_tensorflow()

    class Totals(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            self.total = tf.Variable(tf.zeros([4]))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def add(self, x: object) -> dict[str, object]:
            self.total.assign_add(tf.reduce_sum(x, axis=0))
            return {"total": self.total + 0.0}

        @tf.function(
            input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x"), tf.TensorSpec([], tf.int32, name="k")]
        )
        def scale(self, x: object, k: object) -> dict[str, object]:
            return {"scaled": x * tf.cast(k, tf.float32), "positive": tf.reduce_any(x > 0, axis=1)}

    module = Totals()
    funcs = [module.add.get_concrete_function(), module.scale.get_concrete_function()]
    conv = tf.lite.TFLiteConverter.from_concrete_functions(funcs, module)
    conv.experimental_enable_resource_variables = True
    path.write_bytes(conv.convert())
    return path


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_manifest(
    artifact: Path,
    *,
    name: str = "demo",
    version: int = 1,
    profile: str = "x86_gateway",
    atol: float = 1e-4,
    golden_from: Path | None = None,
) -> Manifest:
    """A valid manifest for `artifact`: specs from the runtime, golden outputs from `golden_from` (default: itself)."""
    fmt = ModelFormat.TFLITE if artifact.suffix == ".tflite" else ModelFormat.ONNX
    model = LoadedModel.from_file(artifact)
    reference = LoadedModel.from_file(golden_from) if golden_from else model
    rng = np.random.default_rng(version)

    def spec(b: object) -> TensorSpec:
        q = QuantParams(scale=b.scale, zero_point=b.zero_point) if b.scale else None  # type: ignore[attr-defined]
        shape = [None, *b.shape[1:]]  # type: ignore[attr-defined]
        return TensorSpec(name=b.name, shape=shape, dtype=str(b.dtype), quantization=q)  # type: ignore[attr-defined]

    cases = []
    for _ in range(2):
        feeds = {b.name: rng.normal(size=(1, *b.shape[1:])).astype(np.float32) for b in model.inputs}
        outs = reference.predict(feeds)
        cases.append(
            GoldenCase(
                inputs={k: v.ravel().tolist() for k, v in feeds.items()},
                expected={k: np.nan_to_num(v).ravel().astype(float).tolist() for k, v in outs.items()},
            )
        )
    hist = HistogramBaseline(name="f0", edges=[-1.0, 0.0, 1.0], counts=[5, 5], mean=0.0, std=1.0, min=-1, max=1)
    quant = Quantization.INT8 if any(b.scale for b in model.inputs) else Quantization.FP32
    return Manifest(
        name=name,
        version=version,
        profile=profile,
        format=fmt,
        quantization=quant,
        task=Task.REGRESSION,
        artifact=ArtifactRef(file=artifact.name, sha256=sha256_file(artifact), size=artifact.stat().st_size),
        inputs=[spec(b) for b in model.inputs],
        outputs=[spec(b) for b in model.outputs],
        baseline=BaselineStats(n_samples=10, inputs=[hist]),
        golden=GoldenSet(cases=cases, atol=atol),
        report=ConversionReport(
            chosen=ArtifactMetrics(
                kind=f"{fmt.value}_{quant.value}", size_bytes=1, latency_ms_p50=0.1, latency_ms_p95=0.2
            ),
            validation_samples=10,
            converter_version="test",
        ),
    )
