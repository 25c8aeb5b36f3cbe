"""Conversion quality benchmark: a small CNN on load_digits, every artifact kind against fp32.

Prints one JSON object. Per kind: size, top-1 accuracy and latency (1 thread, median of 500 runs,
LiteRT for TFLite, onnxruntime for ONNX) relative to the fp32 artifact of the same format, measured
in this run. Top level: `int8_size_ratio` (TFLite int8 / fp32), `int8_top1_loss_pt` (fp32 accuracy
minus int8 accuracy, points) and `chosen_latency_ratio` (worst over the two profiles: chosen / fp32, both
measured afresh and interleaved in this run by bench/interleave.py: the converter's own figures chose the
artifact, so reusing them would be biased in its favour). Targets: <= 0.30, <= 1.0, <= 1.0.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.interleave import interleaved_ratio
from converter.data import load_dataset
from converter.measure import make_runner
from converter.pipeline import ConvertRequest, ConvertResult, convert
from converter.routes import build
from converter.sources import load_source
from edgefleet.samples import digits
from protocol.manifest import Manifest

RUNS = 500
PROFILES = {
    "bench_tflite": (
        'runtimes = ["litert"]\nformats = ["tflite"]\nquantizations = ["fp32", "fp16", "dynamic_int8", "int8"]\n'
    ),
    "bench_onnx": (
        'runtimes = ["onnxruntime"]\nformats = ["onnx"]\nquantizations = ["fp32", "fp16", "dynamic_int8", "int8"]\n'
    ),
}


def train(folder: Path) -> tuple[Path, Path, Path]:
    """A CNN big enough that weights, not flatbuffer overhead, dominate the artifact size."""
    import keras

    data = digits()
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="pixels"),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(256, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, epochs=15, batch_size=32, verbose=0)
    model.save(folder / "cnn.keras")
    calib, val = data.write(folder, calibration_samples=300)
    return folder / "cnn.keras", calib, val


def chosen_vs_fp32(result: ConvertResult, model: Path, calib: Path, val: Path) -> dict[str, float]:
    """Per profile: the shipped artifact's latency over its format's fp32 artifact's, afresh and interleaved."""
    source = load_source(model)
    calibration = load_dataset(calib, source.inputs, where="calibration", labels_allowed=False)
    one = load_dataset(val, source.inputs, where="validation", labels_allowed=True).take(0, 1)
    ratios = {}
    for r in result.results:
        m: Manifest | None = r.manifest
        assert m is not None
        names = {t.runtime_name: t.name for t in [*m.inputs, *m.outputs] if t.runtime_name}
        chosen = make_runner(m.format, (result.out / m.profile / m.artifact.file).read_bytes(), 1, names)
        fp32_bytes = build(source, f"{m.format.value}_fp32", "float32", calibration, requantize=False).model
        fp32 = make_runner(m.format, fp32_bytes, 1, names if m.format.value == "tflite" else None)
        ratios[r.profile.name] = round(interleaved_ratio(chosen, fp32, one, rounds=RUNS), 4)
    return ratios


def main() -> None:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        folder = Path(tmp)
        model, calib, val = train(folder)
        pdir = folder / "profiles"
        pdir.mkdir()
        for name, body in PROFILES.items():
            (pdir / f"{name}.toml").write_text(
                f'name = "{name}"\ndescription = "benchmark host, one thread"\narch = "x86_64"\n{body}'
                "threads = 1\nbudgets = { max_artifact_bytes = 1073741824, max_ram_bytes = 2147483648, "
                "latency_ms = 1000.0, max_accuracy_loss_pt = 100.0 }\n"
            )
        result = convert(
            ConvertRequest(
                model=model,
                profiles=list(PROFILES),
                calibration=calib,
                validation=val,
                out=folder / "out",
                latency_runs=RUNS,
                profiles_dir=pdir,
                cloud=False,
            )
        )
        afresh = chosen_vs_fp32(result, model, calib, val)
    kinds: dict[str, dict[str, float]] = {}
    chosen_ratios = {}
    for r in result.results:
        by = {c.kind: c for c in r.candidates}
        fmt = r.profile.formats[0].value
        fp32 = by[f"{fmt}_fp32"]
        for kind, c in by.items():
            kinds[kind] = {
                "size_bytes": c.size_bytes,
                "size_ratio": round(c.size_bytes / fp32.size_bytes, 4),
                "top1_accuracy": round(c.accuracy or 0.0, 4),
                "top1_vs_fp32_pt": round(((c.accuracy or 0.0) - (fp32.accuracy or 0.0)) * 100, 3),
                "latency_ms_p50": round(c.latency_ms_p50, 5),
                "latency_ratio": round(c.latency_ms_p50 / fp32.latency_ms_p50, 4),
            }
        assert r.manifest is not None
        chosen_ratios[r.profile.name] = {
            "chosen": r.manifest.kind,
            "latency_ratio": afresh[r.profile.name],
            "converter_latency_ratio": kinds[r.manifest.kind]["latency_ratio"],
        }
    out = {
        "benchmark": "convert_quality",
        "threads": 1,
        "latency_runs": RUNS,
        "reference_accuracy": result.reference_accuracy,
        "kinds": kinds,
        "chosen": chosen_ratios,
        "int8_size_ratio": kinds["tflite_int8"]["size_ratio"],
        "int8_top1_loss_pt": round(-kinds["tflite_int8"]["top1_vs_fp32_pt"], 3) + 0.0,
        "onnx_int8_size_ratio": kinds["onnx_int8"]["size_ratio"],
        "onnx_int8_top1_loss_pt": round(-kinds["onnx_int8"]["top1_vs_fp32_pt"], 3) + 0.0,
        "chosen_latency_ratio": max(v["latency_ratio"] for v in chosen_ratios.values()),
        "targets": {"int8_size_ratio": 0.30, "int8_top1_loss_pt": 1.0, "chosen_latency_ratio": 1.0},
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    out["meets_targets"] = all(out[k] <= v for k, v in out["targets"].items())  # type: ignore[operator]
    print(json.dumps(out, indent=None))


if __name__ == "__main__":
    main()
