"""The LiteRT plugin's fallback import: on a device with `tflite-runtime` (numpy 1.x) instead of `ai-edge-litert`,
the converter's TFLite artifacts still load and pass their golden self-test.

Runs for real in `.venv-tflite` (tflite-runtime 2.14 + numpy<2 + pydantic, no ai-edge-litert; `make setup`
creates it), against the manifests the converter wrote for every TFLite profile (fp32 and int8 I/O).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests.support.converted import Converted

ROOT = Path(__file__).resolve().parents[2]
PYTHON = Path(os.environ.get("EDGEFLEET_TEST_TFLITE_PYTHON", ROOT / ".venv-tflite" / "bin" / "python"))

SCRIPT = """
import importlib.util, json, sys
from pathlib import Path
assert importlib.util.find_spec("ai_edge_litert") is None, "this venv must not have ai-edge-litert"
import numpy
from agent.runtimes.litert import _interpreter_class
from agent.selftest import run_self_test
from firmware_profiles import get_profile
from protocol.manifest import Manifest
out = {"numpy": numpy.__version__, "interpreter": _interpreter_class().__module__, "models": {}}
from agent.errors import SelfTestFailed
for path in sys.argv[1:]:
    manifest = Manifest.from_json(Path(path).read_bytes())
    try:
        model, result = run_self_test(manifest, Path(path).parent / manifest.artifact.file,
                                      get_profile(manifest.profile), "device")
    except SelfTestFailed as e:
        out["models"][manifest.profile] = {"kind": manifest.kind, "failed": str(e).splitlines()[0]}
        continue
    case = manifest.golden.cases[0]
    out["models"][manifest.profile] = {"kind": manifest.kind, "cases": result.cases,
                                       "max_abs_error": result.max_abs_error,
                                       "first": {k: v.tolist() for k, v in model.predict(case.inputs).items()}}
print(json.dumps(out))
"""


@pytest.mark.integration
def test_tflite_runtime_fallback_runs_the_converters_artifacts(keras_converted: Converted) -> None:
    assert PYTHON.exists(), f"{PYTHON} missing: run `make setup` (it creates .venv-tflite with tflite-runtime)"
    manifests = sorted(str(p) for p in keras_converted.out.glob("*/manifest.json")
                       if json.loads(p.read_text())["format"] == "tflite")  # fmt: skip
    assert len(manifests) >= 3, manifests
    done = subprocess.run([str(PYTHON), "-c", SCRIPT, *manifests], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["numpy"].startswith("1.") and report["interpreter"].startswith("tflite_runtime")
    assert len(report["models"]) == len(manifests)
    from agent.model import LoadedModel
    from protocol.manifest import Manifest

    passed = 0
    for path in manifests:
        manifest = Manifest.from_json(Path(path).read_bytes())
        seen = report["models"][manifest.profile]
        if "failed" in seen:
            # tflite-runtime 2.14 (its last release) predates FULLY_CONNECTED v12, which current TF writes for
            # dynamic-range int8: the self-test refuses such an artifact with that reason (the device rolls back).
            assert manifest.kind == "tflite_dynamic_int8", seen
            assert "will not load" in seen["failed"] and "Didn't find op for builtin opcode" in seen["failed"], seen
            assert "pip install ai-edge-litert" in seen["failed"], seen  # what to do about it
            continue
        passed += 1
        assert seen["cases"] == len(manifest.golden.cases) > 0
        model = LoadedModel.from_file(Path(path).parent / manifest.artifact.file, manifest=manifest)
        here = model.predict(manifest.golden.cases[0].inputs)  # the same answers as ai-edge-litert here
        assert here.keys() == seen["first"].keys()
        for name, value in here.items():
            assert np.allclose(value, np.asarray(seen["first"][name]), atol=1e-5), (manifest.profile, name)
    kinds = {m["kind"] for m in report["models"].values() if "failed" not in m}
    assert passed >= 3 and "tflite_int8" in kinds, report  # full-int8 I/O (Coral, ESP32, i.MX) runs on the fallback


@pytest.mark.integration
def test_an_op_version_tflite_runtime_lacks_is_refused_with_what_to_install(tmp_path: Path) -> None:
    """Dynamic-range int8 from current TensorFlow writes FULLY_CONNECTED v12: ai-edge-litert loads it,
    tflite-runtime 2.14 cannot, and says which package would (deterministic, unlike the converter's pick)."""
    assert PYTHON.exists(), f"{PYTHON} missing: run `make setup` (it creates .venv-tflite with tflite-runtime)"
    import tensorflow as tf

    from agent.runtimes.litert import LiteRTConfig, LiteRTRuntime

    inputs = tf.keras.Input(shape=(64,))
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(32)(inputs))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic range: int8 weights, float activations
    path = tmp_path / "dynamic.tflite"
    path.write_bytes(converter.convert())
    assert LiteRTRuntime(path, LiteRTConfig()).inputs[0].shape == (None, 64)  # ai-edge-litert, here
    script = (
        "import sys; from pathlib import Path\n"
        "from agent.errors import ModelLoadError\n"
        "from agent.runtimes.litert import LiteRTConfig, LiteRTRuntime\n"
        "try:\n    LiteRTRuntime(Path(sys.argv[1]), LiteRTConfig())\nexcept ModelLoadError as e:\n    print(e)\n"
    )
    done = subprocess.run([str(PYTHON), "-c", script, str(path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    message = done.stdout.strip().splitlines()[0]
    assert message.startswith("dynamic.tflite: LiteRT cannot load it with tflite-runtime"), message
    assert "pip install ai-edge-litert" in message and "FULLY_CONNECTED' version '12'" in message, message
