"""Agent overhead: in-process predict and local-API predict vs the raw runtime, and the daemon's RSS.

The same MLP runs through onnxruntime (the headline keys: `inproc_p50_ratio`, `http_added_p50_ms`,
`rss_mb`; x86 gateway profile) and through LiteRT (`litert_*`; Raspberry Pi profile).
Prints one JSON object. Baselines (raw `InferenceSession.run()`, raw LiteRT `Interpreter.invoke()`)
are measured in the same run on the same inputs. The daemon runs as a real `edgefleet agent run`
subprocess with a private Mosquitto, the model installed in its A/B store and the API on loopback.
Its RSS is set against floors measured in the same run by the same interpreter (FLOOR_SCRIPT): a bare
process with numpy, the runtime and the model (`rss_floor_mb`), and the same with the libraries the agent is
built on imported (`rss_libraries_floor_mb`). `targets_met` says which of the targets each runtime meets; the
RSS target is per runtime (RSS_TARGETS).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raw_runtime import raw_runner  # noqa: E402  (bench/, beside this script)

from agent.inference import InferenceService  # noqa: E402
from agent.metrics import AgentMetrics  # noqa: E402
from agent.model import LoadedModel  # noqa: E402
from agent.serving import ServingRegistry  # noqa: E402
from agent.settings import TelemetrySettings  # noqa: E402
from agent.store import ModelStore  # noqa: E402
from agent.telemetry.recorders import Recorders  # noqa: E402
from agent.telemetry.uplink import TelemetryUplink  # noqa: E402
from protocol.http import EnrollResponse, MqttCredentials  # noqa: E402
from protocol.manifest import BaselineStats, HistogramBaseline, Manifest, Task  # noqa: E402
from tests.agent.builders import make_manifest  # noqa: E402
from tests.support.broker import free_port, start_broker, wait_port  # noqa: E402

RUNS = 2000
BATCH = 8


SMALL = (256, 32, 10)  # the tiny model of the `*rss_small_model_mb` keys
TARGETS = {"inproc_p50_ratio": 1.10, "http_added_p50_ms": 1.0}  # both runtimes (issue 4); each an upper bound
# RSS, decided per runtime (2026-12): the LiteRT daemon <= 80 MB; the onnxruntime daemon <= 12 MB over the floor of
# the libraries it is built on, measured in the same run (onnxruntime's libraries alone already hold ~85 MB).
RSS_TARGETS = {"litert": ("litert_rss_mb", 80.0), "onnxruntime": ("rss_over_libraries_floor_mb", 12.0)}

# The RSS floors (bench/raw_runtime.py run as a script by the daemon's interpreter): numpy, the runtime and the
# same model set up as the agent sets it up, and the same with the libraries the agent is built on imported
# first (LIBRARIES), the floor of any agent made of them. What the daemon holds above that is its own code
# and state: Python modules, MQTT, the local API, telemetry, the SQLite outbox.
LIBRARIES = (
    "paho.mqtt.client",  # with ssl, hashlib (OpenSSL) and email, which it imports
    "pydantic",
    "protocol.messages",  # the wire contract's pydantic models, built (DESIGN.md: pydantic models)
    "protocol.manifest",
    "protocol.telemetry",
    "prometheus_client",
    "http.server",
    "sqlite3",
    "click",
)


def build_mlp(path: Path, sizes: tuple[int, ...] = (256, 1024, 1024, 10)) -> Path:
    """A small MLP (ReLU) with a dynamic batch, written with onnx.helper."""
    rng = np.random.default_rng(0)
    nodes, inits, last = [], [], "x"
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        inits += [
            numpy_helper.from_array((rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32), f"W{i}"),
            numpy_helper.from_array(np.zeros(b, np.float32), f"B{i}"),
        ]
        nodes += [
            helper.make_node("MatMul", [last, f"W{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"B{i}"], [f"a{i}"]),
        ]
        last = f"a{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [last], [f"r{i}"]))
            last = f"r{i}"
    nodes.append(helper.make_node("Identity", [last], ["y"]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", sizes[-1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def timed(fn: Callable[[], object], runs: int = RUNS) -> list[float]:
    for _ in range(50):
        fn()
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def with_baseline(manifest: Manifest) -> Manifest:
    """A classifier manifest with a 10-bin baseline per input feature, as the converter writes one."""
    edges = [float(e) for e in np.linspace(-3, 3, 11)]
    hists = [
        HistogramBaseline(name=f"x[{i}]", edges=edges, counts=[10] * 10, mean=0.0, std=1.0, min=-3, max=3)
        for i in range(256)
    ]
    baseline = BaselineStats(n_samples=100, inputs=hists, class_counts=[10] * 10)
    data = {**manifest.model_dump(), "task": Task.CLASSIFICATION, "baseline": baseline.model_dump()}
    return Manifest.model_validate(data)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """VmRSS (all resident pages), RssAnon (the process's own heap and stacks) or RssFile (mapped files:
    shared libraries, mostly shared with every other process that loads them) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field}")


def floor_rss(model_path: Path, kind: str, libraries: tuple[str, ...] = ()) -> dict[str, float]:
    """VmRSS / RssAnon / RssFile (MB) of a bare process holding numpy, the runtime and the model, run by the
    daemon's interpreter (bench/raw_runtime.py): what any Python program serving this model on this host
    holds; with `libraries` imported too, what any agent built on them holds."""
    python = os.environ.get("EDGEFLEET_BENCH_AGENT_PYTHON", sys.executable)
    script = Path(__file__).with_name("raw_runtime.py")
    out = subprocess.run([python, str(script), str(model_path), kind, *libraries], capture_output=True, text=True,
                         check=True)  # fmt: skip
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def build_tflite_mlp(path: Path, sizes: tuple[int, ...] = (256, 1024, 1024, 10)) -> Path:
    """The same MLP as a float32 .tflite (TensorFlow is used here, in the benchmark, never by the agent)."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    inputs = tf.keras.Input(shape=(sizes[0],), name="x")
    h = inputs
    for i, b in enumerate(sizes[1:]):
        h = tf.keras.layers.Dense(b, activation="relu" if i < len(sizes) - 2 else None)(h)
    model = tf.keras.Model(inputs, h)
    for layer, (a, b) in zip(model.layers[1:], itertools.pairwise(sizes), strict=True):
        layer.set_weights([(rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32), np.zeros(b, np.float32)])
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


def in_process(work: Path, model_path: Path, manifest: Manifest, raw: Callable[[np.ndarray], object],
               profile: str) -> dict[str, list[float]]:  # fmt: skip
    """Raw runtime vs LoadedModel.predict vs the agent's serving path, interleaved, at batch 8 and 1."""
    x = np.random.default_rng(1).normal(size=(BATCH, 256)).astype(np.float32)
    agent_model = LoadedModel.from_file(model_path, threads=1, manifest=manifest)
    name = agent_model.inputs[0].name
    # The agent's in-process path: Agent.predict() == InferenceService.predict(), telemetry included; as in
    # the daemon, a telemetry thread closes windows into an outbox (offline here: nothing is published).
    serving = ServingRegistry()
    serving.install("mlp", 1, agent_model)
    recorders = Recorders("bench-1", profile, window_size=1000, window_seconds=60.0)
    uplink = TelemetryUplink(TelemetrySettings(), recorders, outbox_path=work / f"outbox-{profile}.sqlite",
                             device_id="bench-1", publish=lambda _payload: None, connected=lambda: False)  # fmt: skip
    uplink.start()
    service = InferenceService(serving, AgentMetrics(), recorders, on_window_full=uplink.wake)
    x1 = x[:1]
    out: dict[str, list[float]] = {k: [] for k in ("raw", "inproc", "model_only", "raw1", "inproc1")}
    for _ in range(3):  # interleave rounds so all see the same machine load
        out["raw"] += timed(lambda: raw(x), RUNS // 3)
        out["inproc"] += timed(lambda: service.predict("mlp", {name: x}), RUNS // 3)
        out["model_only"] += timed(lambda: agent_model.predict({name: x}), RUNS // 3)
        out["raw1"] += timed(lambda: raw(x1), RUNS // 3)
        out["inproc1"] += timed(lambda: service.predict("mlp", {name: x1}), RUNS // 3)
    uplink.stop()
    return out


def daemon(
    work: Path, model_path: Path, manifest: Manifest, profile: str, runs: int = 500
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """A real `edgefleet agent run` (private broker, identity on disk, the model active in its A/B store):
    local-API timings at batch 8 and 1, and its memory with the model loaded and MQTT connected."""
    profile_dir = f"{profile}-{model_path.stem}"
    x = np.random.default_rng(1).normal(size=(BATCH, 256)).astype(np.float32)
    name = manifest.inputs[0].name
    broker = start_broker(work / f"mosquitto-{profile_dir}")
    data = work / f"device-{profile_dir}"
    data.mkdir()
    identity = EnrollResponse(
        device_id="bench-1",
        device_token="unused",
        mqtt=MqttCredentials(host="127.0.0.1", port=broker.port, username="", password=""),
        hub_url="http://127.0.0.1:9",
        tuf_root="{}",
    )
    (data / "identity.json").write_bytes(identity.to_bytes())
    os.chmod(data / "identity.json", 0o600)
    store = ModelStore(data / "models")
    store.stage(manifest, manifest.to_bytes(), model_path)
    store.activate("mlp", 1)
    port = free_port()
    config = work / f"agent-{profile_dir}.toml"
    config.write_text(
        f'profile = "{profile}"\ndata_dir = "{data}"\napi_port = {port}\n'
        f'topic_root = "bench/v1"\nlog_level = "WARNING"\nallow_insecure_http = true\n'  # identity: http://
    )
    # EDGEFLEET_BENCH_AGENT_PYTHON: run the daemon with another interpreter, e.g. a venv holding only
    # `pip install edgefleet[agent-onnx]`, as on a device (this one has TensorFlow and the dev tools).
    python = os.environ.get("EDGEFLEET_BENCH_AGENT_PYTHON", sys.executable)
    proc = subprocess.Popen(
        [python, "-m", "edgefleet", "agent", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port("127.0.0.1", port, timeout=60)
        url = f"http://127.0.0.1:{port}"
        with httpx.Client() as client:
            deadline = time.monotonic() + 30
            while not client.get(f"{url}/healthz").json()["mqtt_connected"]:
                if time.monotonic() > deadline:
                    raise RuntimeError("agent did not connect to MQTT")
                time.sleep(0.1)
            headers = {"Content-Type": "application/json"}
            body = json.dumps({"inputs": {name: x.tolist()}}).encode()
            body1 = json.dumps({"inputs": {name: x[:1].tolist()}}).encode()
            assert client.post(f"{url}/v1/models/mlp/predict", content=body, headers=headers).status_code == 200
            times = {
                "http": timed(lambda: client.post(f"{url}/v1/models/mlp/predict", content=body, headers=headers), runs),
                "http1": timed(
                    lambda: client.post(f"{url}/v1/models/mlp/predict", content=body1, headers=headers), runs
                ),
                "health": timed(lambda: client.get(f"{url}/healthz"), runs),
            }
        memory = {k: rss_mb(proc.pid, k) for k in ("VmRSS", "RssAnon", "RssFile")}
        if os.environ.get("EDGEFLEET_BENCH_MAPS"):  # which shared objects the daemon has mapped
            maps = Path(f"/proc/{proc.pid}/maps").read_text().splitlines()
            print(sorted({line.split()[-1].rsplit("/", 1)[-1] for line in maps if ".so" in line}), file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        broker.stop()
    return times, memory


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="agent-bench-"))
    # onnxruntime (the x86 gateway profile): the headline keys.
    onnx_path = build_mlp(work / "mlp.onnx")
    manifest = with_baseline(make_manifest(onnx_path, name="mlp", version=1, profile="x86_gateway"))
    t = in_process(work, onnx_path, manifest, raw_runner(onnx_path, "onnx"), "x86_gateway")
    h, mem = daemon(work, onnx_path, manifest, "x86_gateway")
    floor = floor_rss(onnx_path, "onnx")
    libs_floor = floor_rss(onnx_path, "onnx", LIBRARIES)
    # The same daemon serving a tiny model (256-32-10, 33 KB): the agent's own footprint, without the
    # resident cost of the benchmark model (its mapped or parsed weights and the runtime's packed copy).
    small_onnx = build_mlp(work / "mlp_small.onnx", SMALL)
    small_manifest = with_baseline(make_manifest(small_onnx, name="mlp", version=1, profile="x86_gateway"))
    _, small_mem = daemon(work, small_onnx, small_manifest, "x86_gateway", runs=200)

    # LiteRT (the Raspberry Pi profile): raw Interpreter set_tensor + invoke + get_tensor, same weights.
    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints; this script prints one JSON object
        tfl_path = build_tflite_mlp(work / "mlp.tflite")
    tfl_manifest = with_baseline(make_manifest(tfl_path, name="mlp", version=1, profile="raspberry_pi_4"))
    lt = in_process(work, tfl_path, tfl_manifest, raw_runner(tfl_path, "tflite"), "raspberry_pi_4")
    lh, lmem = daemon(work, tfl_path, tfl_manifest, "raspberry_pi_4")
    lfloor = floor_rss(tfl_path, "tflite")
    libs_lfloor = floor_rss(tfl_path, "tflite", LIBRARIES)
    with contextlib.redirect_stdout(io.StringIO()):
        small_tfl = build_tflite_mlp(work / "mlp_small.tflite", SMALL)
    small_tfl_manifest = with_baseline(make_manifest(small_tfl, name="mlp", version=1, profile="raspberry_pi_4"))
    _, small_lmem = daemon(work, small_tfl, small_tfl_manifest, "raspberry_pi_4", runs=200)

    def p50(v: list[float]) -> float:
        return pct(v, 50)

    result: dict[str, Any] = {
        "model": "mlp 256-1024-1024-10 float32, 1 thread in-process; batch 8 unless suffixed _b1",
        "inproc_path": "InferenceService.predict (= Agent.predict), telemetry recording included",
        "http_server": "http.server (stdlib), one thread per connection",
        # Headline keys (onnxruntime): in-process at batch 8; HTTP for a one-sample request (256 floats of JSON).
        "inproc_p50_ratio": round(p50(t["inproc"]) / p50(t["raw"]), 4),
        "http_added_p50_ms": round(p50(h["http1"]) - p50(t["inproc1"]), 4),
        "rss_mb": round(mem["VmRSS"], 1),
        "raw_p50_ms": round(p50(t["raw"]), 4),
        "raw_p99_ms": round(pct(t["raw"], 99), 4),
        "inproc_p50_ms": round(p50(t["inproc"]), 4),
        "inproc_model_only_p50_ms": round(p50(t["model_only"]), 4),  # LoadedModel.predict, no telemetry
        "inproc_p99_ms": round(pct(t["inproc"], 99), 4),
        # The mean, beside the p50 the target is on: telemetry's bulk work (binning, classes) lands on a few
        # calls or on the telemetry thread, which the p50 does not see and the mean does.
        "inproc_mean_ratio": round(statistics.fmean(t["inproc"]) / statistics.fmean(t["raw"]), 4),
        "http_p50_ms": round(p50(h["http"]), 4),
        "http_p99_ms": round(pct(h["http"], 99), 4),
        "http_added_p50_ms_b8": round(p50(h["http"]) - p50(t["inproc"]), 4),
        "raw_p50_ms_b1": round(p50(t["raw1"]), 4),
        "inproc_p50_ms_b1": round(p50(t["inproc1"]), 4),
        "inproc_p50_ratio_b1": round(p50(t["inproc1"]) / p50(t["raw1"]), 4),
        "http_p50_ms_b1": round(p50(h["http1"]), 4),
        "http_p99_ms_b1": round(pct(h["http1"], 99), 4),
        "http_healthz_p50_ms": round(p50(h["health"]), 4),
        "rss_anon_mb": round(mem["RssAnon"], 1),
        "rss_file_mb": round(mem["RssFile"], 1),
        "rss_small_model_mb": round(small_mem["VmRSS"], 1),
        # The same-run floor (FLOOR_SCRIPT: numpy + onnxruntime + this model, no agent) and the agent's share.
        "rss_floor_mb": round(floor["VmRSS"], 1),
        "rss_floor_anon_mb": round(floor["RssAnon"], 1),
        "rss_own_mb": round(mem["VmRSS"] - floor["VmRSS"], 1),
        "rss_libraries_floor_mb": round(libs_floor["VmRSS"], 1),  # the floor + LIBRARIES imported
        "model_file_mb": round(onnx_path.stat().st_size / 2**20, 2),
        # LiteRT, same model and inputs (the runtime of the Pi / Coral / i.MX profiles).
        "litert_inproc_p50_ratio": round(p50(lt["inproc"]) / p50(lt["raw"]), 4),
        "litert_http_added_p50_ms": round(p50(lh["http1"]) - p50(lt["inproc1"]), 4),
        "litert_rss_mb": round(lmem["VmRSS"], 1),
        "litert_raw_p50_ms": round(p50(lt["raw"]), 4),
        "litert_inproc_p50_ms": round(p50(lt["inproc"]), 4),
        "litert_inproc_model_only_p50_ms": round(p50(lt["model_only"]), 4),
        "litert_inproc_p50_ratio_b1": round(p50(lt["inproc1"]) / p50(lt["raw1"]), 4),
        "litert_inproc_mean_ratio": round(statistics.fmean(lt["inproc"]) / statistics.fmean(lt["raw"]), 4),
        "litert_rss_anon_mb": round(lmem["RssAnon"], 1),
        "litert_rss_file_mb": round(lmem["RssFile"], 1),
        "litert_rss_small_model_mb": round(small_lmem["VmRSS"], 1),
        "litert_rss_floor_mb": round(lfloor["VmRSS"], 1),
        "litert_rss_floor_anon_mb": round(lfloor["RssAnon"], 1),
        "litert_rss_own_mb": round(lmem["VmRSS"] - lfloor["VmRSS"], 1),
        "litert_rss_libraries_floor_mb": round(libs_lfloor["VmRSS"], 1),
        "litert_model_file_mb": round(tfl_path.stat().st_size / 2**20, 2),
        "runs": {"raw": len(t["raw"]), "inproc": len(t["inproc"]), "http": len(h["http"])},
        "stdev_raw_ms": round(statistics.pstdev(t["raw"]), 4),
    }
    # The targets (upper bounds), as the other benchmarks give them, and which runtime meets each.
    result["rss_over_libraries_floor_mb"] = round(result["rss_mb"] - result["rss_libraries_floor_mb"], 1)
    result["targets"] = {**TARGETS, **{key: bound for key, bound in RSS_TARGETS.values()}}
    result["targets_met"] = {
        key: {"onnxruntime": result[key] <= bound, "litert": result[f"litert_{key}"] <= bound}
        for key, bound in TARGETS.items()
    }
    result["targets_met"]["rss"] = {runtime: result[key] <= bound for runtime, (key, bound) in RSS_TARGETS.items()}
    result["meets_targets"] = all(all(met.values()) for met in result["targets_met"].values())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
