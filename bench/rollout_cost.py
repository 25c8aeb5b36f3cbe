"""What a rollout costs a device (issue 21): bytes on the link with delta updates, time to apply a patch.

Delta updates (hub/deltas.py makes the patches at push, agent/delta.py applies them; docs/updates.md):

- `delta_bytes_ratio_head_finetune` (target <= 0.15): a Keras CNN (edgefleet.samples.train_keras_cnn on digits)
  whose last layer alone is retrained, both versions converted by the real converter (converter.pipeline
  `convert`) to TFLite fp32 (raspberry_pi_4) and ONNX fp32 (x86_gateway): patch bytes over full artifact bytes,
  the worse of the two formats (each one under `head_finetune`, beside the int8 artifacts of the same two
  versions, reported only). Each version is converted by its own `edgefleet convert` process, as a release is
  built; `head_finetune_same_process` converts both in one process through the Python API.
- `delta_bytes_ratio_full_retrain` (reported): the same CNN trained again from another initialisation; with the
  20 % rule the hub offers no patch when it saves less (`full_retrain_patch_offered`).
- `head_finetune_layout`: whether the converter kept the unchanged tensors byte-identical and in place (each
  constant tensor of 64 bytes or more located in both artifacts: `changed` names the retrained ones,
  `order_kept` and `offset_shifts` say where the unchanged ones went).
- `delta_apply_ms` (median): agent.delta.apply_patch rebuilding a ~5 MB TFLite fp32 artifact (the same CNN,
  wider) from its head-finetune patch into an fsynced file, as the device does before it verifies the result;
  baselines of the same run: `apply_floor_decompress_ms` (zstd one-shot in memory) and `apply_floor_copy_ms`
  (copying the 5 MB artifact into an fsynced file).
- `alternatives`: the formats not chosen, on the same artifacts (bsdiff4; the `zstandard` package, which has
  a raw-content dictionary but no prefix), and a synthetic 32 MB fp32 artifact with 1 % of it retrained, where
  the dictionary loses the earlier artifact at level 12 and needs level 19 and ~40x the time of the chosen
  format to keep it (needs the dev extra; left out with a note otherwise).

Shadow evaluation (agent/shadow/; docs/agent.md "Shadow evaluation"):

- `shadow_added_p50_ms` (target <= 0.05 ms): the p50 of one in-process device prediction (InferenceService.predict,
  the `Agent.predict` path, telemetry recording included) of a small MLP with a candidate shadowing it at fraction
  1.0 (default `[shadow]` settings: queue 64, CPU budget 0.25), minus the p50 without a shadow; the same model and
  inputs, alternating blocks of calls in one run. Beside it: both p50s and p99s, and how many sampled requests the
  candidate compared and how many it dropped (its queue full while it idles within its budget).

Prints one JSON object. `python bench/rollout_cost.py shadow` measures the shadow keys alone (seconds, no
TensorFlow); without an argument, everything (minutes: trains and converts the CNNs).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import firmware_profiles
from agent import delta
from hub import deltas
from hub.deltas import zstd  # compression.zstd from Python 3.14, backports.zstd before

TARGETS = {"delta_bytes_ratio_head_finetune": 0.15, "shadow_added_p50_ms": 0.05}  # key -> upper bound
FORMATS = {"tflite_fp32": "raspberry_pi_4", "onnx_fp32": "x86_gateway"}
INT8_FORMATS = {"tflite_int8": "raspberry_pi_4", "onnx_int8": "x86_gateway"}  # reported beside, not a target
APPLY_RUNS = 15
SHADOW_BLOCKS = 40  # alternating blocks per arm (shadow off, shadow on)...
SHADOW_BLOCK_CALLS = 250  # ...of this many predictions each
SHADOW_MLP = (64, 256, 256, 10)  # the serving model and the candidate: the same shape, other weights
WIDE = 176  # the CNN's width for the ~5 MB artifact (1.27 M parameters)


def one_quantization_profiles(folder: Path, quantization: str) -> Path:
    """The two profiles with `quantization` as their only one and the latency budget lifted."""
    folder.mkdir(parents=True, exist_ok=True)
    for profile in FORMATS.values():
        text = (Path(firmware_profiles.__file__).parent / f"{profile}.toml").read_text()
        text = re.sub(r"quantizations = \[[^]]*\]", f'quantizations = ["{quantization}"]', text)
        text = re.sub(r"latency_ms = [0-9.]+", "latency_ms = 600000.0", text)
        (folder / f"{profile}.toml").write_text(text)
    return folder


def train_versions(folder: Path, width: int, epochs: int) -> dict[str, Path]:
    """v1 (edgefleet.samples.train_keras_cnn), v2 = v1 with its last layer alone retrained, v3 = the same
    architecture trained from another initialisation."""
    from edgefleet.samples import digits, train_keras_cnn

    data = digits()
    folder.mkdir(parents=True, exist_ok=True)
    v1 = train_keras_cnn(folder / "v1.keras", data, epochs=epochs, width=width)
    import keras

    head = keras.models.load_model(v1)
    for layer in head.layers[:-1]:
        layer.trainable = False
    keras.utils.set_random_seed(7)
    head.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    head.fit(data.x_train[::-1], data.y_train[::-1], epochs=3, batch_size=32, verbose=0)
    head.save(folder / "v2.keras")
    keras.utils.set_random_seed(1)
    fresh = keras.models.clone_model(keras.models.load_model(v1))  # new weights, same architecture
    fresh.compile("adam", "sparse_categorical_crossentropy")
    fresh.fit(data.x_train, data.y_train, epochs=epochs, batch_size=32, verbose=0)
    fresh.save(folder / "v3.keras")
    return {"v1": v1, "v2": folder / "v2.keras", "v3": folder / "v3.keras"}


def convert_versions(folder: Path, models: dict[str, Path], formats: dict[str, str], *, fresh_process: bool = True
                     ) -> dict[str, dict[str, Path]]:  # fmt: skip
    """Each version through the real converter (converter.pipeline `convert`): by default each in its own process,
    as `edgefleet convert` builds a release; {format: {version: artifact}}."""
    from converter.pipeline import ConvertRequest, convert
    from edgefleet.samples import digits
    from protocol.manifest import Manifest

    calib, val = digits().write(folder / "data")
    quantization = next(iter(formats)).rsplit("_", 1)[1]
    profiles = one_quantization_profiles(folder / f"profiles-{quantization}", quantization)
    out: dict[str, dict[str, Path]] = {kind: {} for kind in formats}
    for version, model in models.items():
        dest = folder / f"out-{version}-{quantization}{'' if fresh_process else '-same-process'}"
        request = ConvertRequest(model=model, profiles=list(formats.values()), calibration=calib, validation=val,
                                 out=dest, name="digits", version=int(version[1:]), latency_runs=10,
                                 profiles_dir=profiles, cloud=False)  # fmt: skip
        if fresh_process:
            args = [a for p in request.profiles for a in ("--profile", p)]
            subprocess.run([sys.executable, "-m", "edgefleet", "convert", str(model), *args, "--calibration",
                            str(calib), "--validation", str(val), "--out", str(dest), "--name", "digits",
                            "--version", version[1:], "--latency-runs", "10", "--profiles-dir", str(profiles),
                            "--no-cloud"], check=True, capture_output=True)  # fmt: skip
        else:
            convert(request)
        for kind, profile in formats.items():
            manifest = Manifest.from_json((dest / profile / "manifest.json").read_bytes())
            assert manifest.report.chosen.kind == kind, (profile, manifest.report.chosen.kind)
            out[kind][version] = dest / profile / manifest.artifact.file
    return out


def ratio(old: Path, new: Path) -> tuple[int, int, float]:
    patch = deltas.make_patch(old.read_bytes(), new.read_bytes())
    return len(patch), new.stat().st_size, round(len(patch) / new.stat().st_size, 4)


def constant_tensors(path: Path) -> dict[str, tuple[int, bytes]]:
    """name -> (offset in the file, bytes) of every constant tensor of 64 bytes or more in an artifact."""
    data = path.read_bytes()
    tensors: list[tuple[str, bytes]] = []
    if path.suffix == ".onnx":
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(path))
        tensors = [(t.name, numpy_helper.to_array(t).tobytes()) for t in model.graph.initializer]
    else:
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path))
        interpreter.allocate_tensors()
        for detail in interpreter.get_tensor_details():
            try:
                values = interpreter.get_tensor(detail["index"])
            except ValueError:  # an intermediate tensor the interpreter has not allocated
                continue
            tensors.append((f"#{detail['index']} {detail['name']}", values.tobytes()))
    # Constants are in the file; activations (whatever their buffers hold now) are not, unless uniform (zeros).
    return {name: (data.find(b), b) for name, b in tensors if len(b) >= 64 and len(set(b)) > 1 and data.find(b) >= 0}


def layout(old: Path, new: Path) -> dict[str, Any]:
    """The constant tensors of two versions by name: which changed, and whether the unchanged ones kept their bytes,
    their order and their offsets (`offset_shifts`: new offset - old offset, over the unchanged tensors)."""
    a, b = constant_tensors(old), constant_tensors(new)
    common = [name for name in a if name in b]
    changed = [name for name in common if a[name][1] != b[name][1]]
    unchanged = [name for name in common if name not in changed]
    order_kept = sorted(unchanged, key=lambda n: a[n][0]) == sorted(unchanged, key=lambda n: b[n][0])
    return {"tensors": len(a), "changed": changed, "unchanged": len(unchanged), "order_kept": order_kept,
            "offset_shifts": sorted({b[n][0] - a[n][0] for n in unchanged}),
            "only_in_one": sorted(set(a) ^ set(b))}  # fmt: skip


def median_ms(fn: Callable[[], object], runs: int = APPLY_RUNS) -> float:
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1000)
    return round(statistics.median(times), 2)


def apply_times(folder: Path, old: Path, new: Path) -> dict[str, Any]:
    """agent.delta.apply_patch on the ~5 MB pair, with the floors measured in the same run."""
    patch = folder / "patch.zstd"
    patch.write_bytes(deltas.make_patch(old.read_bytes(), new.read_bytes()))
    out = folder / "rebuilt.tmp"
    applied = median_ms(lambda: delta.apply_patch(old, patch, out, new.stat().st_size))
    assert out.read_bytes() == new.read_bytes()
    old_bytes, patch_bytes = old.read_bytes(), patch.read_bytes()
    floor = median_ms(lambda: zstd.decompress(patch_bytes, zstd_dict=zstd.ZstdDict(old_bytes, is_raw=True).as_prefix))

    def copy() -> None:
        shutil.copyfile(new, out)
        with out.open("rb+") as f:
            os.fsync(f.fileno())

    return {"delta_apply_ms": applied, "apply_floor_decompress_ms": floor, "apply_floor_copy_ms": median_ms(copy),
            "apply_artifact_bytes": new.stat().st_size, "apply_patch_bytes": len(patch_bytes)}  # fmt: skip


def alternatives(pairs: dict[str, tuple[Path, Path]]) -> dict[str, Any]:
    """Patch bytes and apply time of bsdiff4 and of `zstandard` with a raw-content dictionary, beside the chosen
    format, on the same pairs; and a synthetic 32 MB pair with 1 % of it retrained."""
    try:
        import bsdiff4
        import zstandard
    except ImportError as e:
        return {"note": f"not measured: {e} (pip install 'edgefleet[dev]')"}

    def raw_dict(old: bytes, new: bytes, level: int = 19) -> tuple[bytes, Callable[[], bytes]]:
        wl = max(10, min(31, max(len(old), len(new)).bit_length() + 1))
        params = zstandard.ZstdCompressionParameters.from_level(level, source_size=len(new), dict_size=len(old),
                                                                window_log=wl, enable_ldm=True)  # fmt: skip
        d = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        patch = zstandard.ZstdCompressor(dict_data=d, compression_params=params).compress(new)
        dd = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        return patch, lambda: zstandard.ZstdDecompressor(dict_data=dd, max_window_size=1 << wl).decompress(patch)

    def chosen(old: bytes, new: bytes) -> tuple[bytes, Callable[[], bytes]]:
        patch = deltas.make_patch(old, new)
        return patch, lambda: zstd.decompress(patch, zstd_dict=zstd.ZstdDict(old, is_raw=True).as_prefix)

    def bsdiff(old: bytes, new: bytes) -> tuple[bytes, Callable[[], bytes]]:
        patch = bsdiff4.diff(old, new)
        return patch, lambda: bsdiff4.patch(old, patch)

    methods: dict[str, Callable[[bytes, bytes], tuple[bytes, Callable[[], bytes]]]] = {
        "zstd_prefix_level9 (chosen)": chosen,
        "zstandard_rawdict_level12": lambda old, new: raw_dict(old, new, 12),
        "zstandard_rawdict_level19": raw_dict,
        "bsdiff4": bsdiff,
    }
    rng = np.random.default_rng(0)
    weights = rng.normal(size=8 << 20).astype(np.float32)  # 32 MB of fp32
    retrained = weights.copy()
    k = len(weights) // 100
    retrained[len(weights) - k :] = rng.normal(size=k)
    inputs = {name: (a.read_bytes(), b.read_bytes()) for name, (a, b) in pairs.items()}
    inputs["synthetic_32mb_1pct_retrained"] = (b"v1" + weights.tobytes(), b"v2." + retrained.tobytes())
    out: dict[str, Any] = {}
    for case, (old, new) in inputs.items():
        out[case] = {}
        for method, make in methods.items():
            if method == "bsdiff4" and len(new) > 8 << 20:
                out[case][method] = "not run (minutes and ~16 bytes of memory per input byte)"
                continue
            began = time.perf_counter()
            patch, apply = make(old, new)
            made_ms = (time.perf_counter() - began) * 1000
            assert apply() == new, (case, method)
            out[case][method] = {"bytes": len(patch), "ratio": round(len(patch) / len(new), 4),
                                 "make_ms": round(made_ms), "apply_ms": median_ms(apply, 5)}  # fmt: skip
    return out


def measure_deltas(folder: Path) -> dict[str, Any]:
    """The delta-update keys (see the module docstring)."""
    models = train_versions(folder / "small", width=16, epochs=12)
    small = convert_versions(folder / "small", models, FORMATS)
    result: dict[str, Any] = {"head_finetune": {}, "full_retrain": {}, "head_finetune_layout": {}}
    for kind, artifacts in small.items():
        for case, new in (("head_finetune", "v2"), ("full_retrain", "v3")):
            patch, full, r = ratio(artifacts["v1"], artifacts[new])
            result[case][kind] = {"patch_bytes": patch, "full_bytes": full, "ratio": r}
        result["head_finetune_layout"][kind] = layout(artifacts["v1"], artifacts["v2"])
    result["delta_bytes_ratio_head_finetune"] = max(result["head_finetune"][kind]["ratio"] for kind in FORMATS)
    result["delta_bytes_ratio_full_retrain"] = max(r["ratio"] for r in result["full_retrain"].values())
    result["full_retrain_patch_offered"] = {kind: deltas.worth_offering(r["patch_bytes"], r["full_bytes"])
                                            for kind, r in result["full_retrain"].items()}  # fmt: skip
    int8 = convert_versions(folder / "small", {k: models[k] for k in ("v1", "v2")}, INT8_FORMATS)
    for kind, artifacts in int8.items():
        patch, full, r = ratio(artifacts["v1"], artifacts["v2"])
        result["head_finetune"][kind] = {"patch_bytes": patch, "full_bytes": full, "ratio": r}
        result["head_finetune_layout"][kind] = layout(artifacts["v1"], artifacts["v2"])
    # v1 and v2 converted one after the other in one process (the Python API, as a training pipeline may call it)
    same = convert_versions(folder / "small", {k: models[k] for k in ("v1", "v2")}, FORMATS, fresh_process=False)
    result["head_finetune_same_process"] = {
        kind: {"ratio": ratio(artifacts["v1"], artifacts["v2"])[2], "layout": layout(artifacts["v1"], artifacts["v2"])}
        for kind, artifacts in same.items()
    }
    wide_models = train_versions(folder / "wide", width=WIDE, epochs=2)
    wide_models.pop("v3")
    wide = convert_versions(folder / "wide", wide_models, {"tflite_fp32": FORMATS["tflite_fp32"]})["tflite_fp32"]
    result |= apply_times(folder, wide["v1"], wide["v2"])
    result["delta_bytes_ratio_head_finetune_5mb"] = ratio(wide["v1"], wide["v2"])[2]
    pairs = {f"{kind}_{case}": (artifacts["v1"], artifacts[v]) for kind, artifacts in small.items()
             for case, v in (("head_finetune", "v2"), ("full_retrain", "v3"))}  # fmt: skip
    pairs["tflite_fp32_5mb_head_finetune"] = (wide["v1"], wide["v2"])
    result["alternatives"] = alternatives(pairs)
    return result


def shadow_mlp(path: Path, seed: int) -> Path:
    """An MLP (ReLU) of SHADOW_MLP with a dynamic batch, written with onnx.helper."""
    import itertools

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, last = [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(SHADOW_MLP)):
        inits += [numpy_helper.from_array((rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32), f"W{i}"),
                  numpy_helper.from_array(np.zeros(b, np.float32), f"B{i}")]  # fmt: skip
        nodes += [helper.make_node("MatMul", [last, f"W{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"B{i}"], [f"a{i}"])]  # fmt: skip
        last = f"a{i}"
        if i < len(SHADOW_MLP) - 2:
            nodes.append(helper.make_node("Relu", [last], [f"r{i}"]))
            last = f"r{i}"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", SHADOW_MLP[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", SHADOW_MLP[-1]])
    graph = helper.make_graph(nodes, "mlp", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def measure_shadow(folder: Path) -> dict[str, Any]:
    """`shadow_added_p50_ms` and its context (see the module docstring)."""
    from agent.inference import InferenceService
    from agent.metrics import AgentMetrics
    from agent.model import LoadedModel
    from agent.serving import ServingRegistry
    from agent.settings import ShadowSettings
    from agent.shadow.runner import ShadowRunner
    from agent.telemetry.recorders import Recorders
    from protocol.shadow import ShadowSummary, merge_shadow
    from tests.agent.builders import make_manifest

    folder.mkdir(parents=True, exist_ok=True)
    serving_path, candidate_path = shadow_mlp(folder / "serving.onnx", 0), shadow_mlp(folder / "candidate.onnx", 1)
    threads = firmware_profiles.get_profile("x86_gateway").threads
    serving = ServingRegistry()
    serving_manifest = make_manifest(serving_path, name="mlp", version=1)
    serving.install("mlp", 1, LoadedModel.from_file(serving_path, threads, serving_manifest))
    candidate_manifest = make_manifest(candidate_path, name="mlp", version=2)
    candidate = LoadedModel.from_file(candidate_path, threads, candidate_manifest)
    metrics = AgentMetrics()
    recorders = Recorders("bench-1", "x86_gateway", window_size=1000, window_seconds=60.0)
    service = InferenceService(serving, metrics, recorders)
    windows: list[ShadowSummary] = []
    runner = ShadowRunner(candidate, candidate_manifest, fraction=1.0, settings=ShadowSettings(), emit=windows.append,
                          metrics=metrics).start()  # fmt: skip
    x = np.random.default_rng(2).normal(size=(1, SHADOW_MLP[0])).astype(np.float32)
    arms: dict[str, list[float]] = {"off": [], "on": []}
    off: dict[str, ShadowRunner] = {}
    on = {"mlp": runner}
    for block in range(-2, SHADOW_BLOCKS * 2):  # two warm-up blocks, then off, on, off, on, ...
        arm = "on" if block % 2 else "off"
        service.shadows = on if arm == "on" else off
        times = []
        for _ in range(SHADOW_BLOCK_CALLS):
            began = time.perf_counter()
            service.predict("mlp", {"x": x})
            times.append((time.perf_counter() - began) * 1000)
        if block >= 0:
            arms[arm] += times
    runner.stop()
    merged = merge_shadow(windows)
    p50 = {arm: statistics.median(t) for arm, t in arms.items()}
    p99 = {arm: float(np.percentile(t, 99)) for arm, t in arms.items()}
    return {
        "shadow_added_p50_ms": round(p50["on"] - p50["off"], 4),
        "shadow": {
            "path": "InferenceService.predict (= Agent.predict), telemetry recording included; batch 1",
            "model": f"MLP {'-'.join(map(str, SHADOW_MLP))}, onnxruntime, {threads} threads",
            "predict_p50_ms": {arm: round(v, 4) for arm, v in p50.items()},
            "predict_p99_ms": {arm: round(v, 4) for arm, v in p99.items()},
            "calls_per_arm": len(arms["on"]),
            "settings": ShadowSettings().model_dump(),
            "compared": merged.samples if merged else 0,
            "dropped": merged.dropped if merged else 0,
            "agreement": round(1 - merged.disagreement, 4) if merged and merged.disagreement is not None else None,
            "candidate_busy_s": round(runner.busy_s, 3),
            "candidate_idle_s": round(runner.idle_s, 3),
        },
    }


def main() -> None:
    only_shadow = sys.argv[1:] == ["shadow"]
    began = time.perf_counter()
    result: dict[str, Any] = {"benchmark": "rollout_cost"}
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-rollout-") as tmp:
        if not only_shadow:
            from converter.sources import quiet_tensorflow

            quiet_tensorflow()
            result |= measure_deltas(Path(tmp))
        result |= measure_shadow(Path(tmp) / "shadow")
    result["patch_format"] = {"algorithm": deltas.ALGORITHM, "level": deltas.LEVEL, "min_saving": deltas.MIN_SAVING,
                              "history": deltas.HISTORY}  # fmt: skip
    result["targets"] = TARGETS
    result["targets_met"] = {key: result[key] <= bound for key, bound in TARGETS.items() if key in result}
    result["meets_targets"] = all(result["targets_met"].values())
    result["machine"] = {"python": platform.python_version(), "machine": platform.machine(),
                         "cpus": os.cpu_count() or 0, "cpu": _cpu()}  # fmt: skip
    result["seconds"] = round(time.perf_counter() - began, 1)
    print(json.dumps(result, indent=1))


def _cpu() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


if __name__ == "__main__":
    main()
