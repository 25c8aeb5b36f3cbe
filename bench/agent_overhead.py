"""Agent overhead: in-process predict and local-API predict vs the raw runtime, and the daemon's RSS.

Prints one JSON object. Baselines (raw `InferenceSession.run()`, raw LiteRT `Interpreter.invoke()`)
are measured in the same run on the same inputs. The daemon runs as a real `edgefleet agent run`
subprocess with a private Mosquitto, the model installed in its A/B store and the API on loopback.
"""

from __future__ import annotations

import importlib.util
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

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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


def main() -> None:
    import onnxruntime as ort

    work = Path(tempfile.mkdtemp(prefix="agent-bench-"))
    model_path = build_mlp(work / "mlp.onnx")
    x = np.random.default_rng(1).normal(size=(BATCH, 256)).astype(np.float32)

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    manifest = with_baseline(make_manifest(model_path, name="mlp", version=1, profile="x86_gateway"))
    agent_model = LoadedModel.from_file(model_path, threads=1, manifest=manifest)
    # The agent's in-process path: Agent.predict() == InferenceService.predict(), telemetry included.
    serving = ServingRegistry()
    serving.install("mlp", 1, agent_model)
    recorders = Recorders("bench-1", "x86_gateway", window_size=1000, window_seconds=60.0)
    # As in the daemon: a telemetry thread bins handed-over chunks and closes windows into an outbox
    # (offline here: nothing is published).
    uplink = TelemetryUplink(TelemetrySettings(), recorders, outbox_path=work / "outbox.sqlite", device_id="bench-1",
                             publish=lambda _payload: None, connected=lambda: False)  # fmt: skip
    uplink.start()
    service = InferenceService(serving, AgentMetrics(), recorders, on_window_full=uplink.wake)
    x1 = x[:1]
    raw, inproc, raw1, inproc1, model_only = [], [], [], [], []
    for _ in range(3):  # interleave rounds so both see the same machine load
        raw += timed(lambda: session.run(["y"], {"x": x}), RUNS // 3)
        inproc += timed(lambda: service.predict("mlp", {"x": x}), RUNS // 3)
        model_only += timed(lambda: agent_model.predict({"x": x}), RUNS // 3)
        raw1 += timed(lambda: session.run(["y"], {"x": x1}), RUNS // 3)
        inproc1 += timed(lambda: service.predict("mlp", {"x": x1}), RUNS // 3)
    uplink.stop()

    # The daemon: private broker, identity on disk (no enrollment needed), model installed and active.
    broker = start_broker(work / "mosquitto")
    data = work / "device"
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
    config = work / "agent.toml"
    config.write_text(
        f'profile = "x86_gateway"\ndata_dir = "{data}"\napi_port = {port}\n'
        f'topic_root = "bench/v1"\nlog_level = "WARNING"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgefleet", "agent", "run", "--config", str(config)],
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
            body = json.dumps({"inputs": {"x": x.tolist()}}).encode()
            headers = {"Content-Type": "application/json"}
            http = timed(lambda: client.post(f"{url}/v1/models/mlp/predict", content=body, headers=headers), 500)
            body1 = json.dumps({"inputs": {"x": x1.tolist()}}).encode()
            http1 = timed(lambda: client.post(f"{url}/v1/models/mlp/predict", content=body1, headers=headers), 500)
            health = timed(lambda: client.get(f"{url}/healthz"), 500)
            assert client.post(f"{url}/v1/models/mlp/predict", content=body, headers=headers).status_code == 200
        rss = rss_mb(proc.pid)
        rss_anon, rss_file = rss_mb(proc.pid, "RssAnon"), rss_mb(proc.pid, "RssFile")
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        broker.stop()

    raw_p50, inproc_p50, http_p50 = pct(raw, 50), pct(inproc, 50), pct(http, 50)
    inproc1_p50, http1_p50 = pct(inproc1, 50), pct(http1, 50)
    result = {
        "model": "onnx mlp 256-1024-1024-10, 1 thread in-process; batch 8 unless suffixed _b1",
        "inproc_path": "InferenceService.predict (= Agent.predict), telemetry recording included",
        "http_parser": "httptools" if importlib.util.find_spec("httptools") else "h11",
        # Headline keys: in-process at batch 8; HTTP for a one-sample request (256 floats of JSON).
        "inproc_p50_ratio": round(inproc_p50 / raw_p50, 4),
        "http_added_p50_ms": round(http1_p50 - inproc1_p50, 4),
        "raw_p50_ms": round(raw_p50, 4),
        "raw_p99_ms": round(pct(raw, 99), 4),
        "inproc_p50_ms": round(inproc_p50, 4),
        "inproc_model_only_p50_ms": round(pct(model_only, 50), 4),  # LoadedModel.predict, no telemetry
        "inproc_p99_ms": round(pct(inproc, 99), 4),
        "http_p50_ms": round(http_p50, 4),
        "http_p99_ms": round(pct(http, 99), 4),
        "http_added_p50_ms_b8": round(http_p50 - inproc_p50, 4),
        "raw_p50_ms_b1": round(pct(raw1, 50), 4),
        "inproc_p50_ms_b1": round(inproc1_p50, 4),
        "inproc_p50_ratio_b1": round(inproc1_p50 / pct(raw1, 50), 4),
        "http_p50_ms_b1": round(http1_p50, 4),
        "http_p99_ms_b1": round(pct(http1, 99), 4),
        "http_healthz_p50_ms": round(pct(health, 50), 4),
        "rss_mb": round(rss, 1),
        "rss_anon_mb": round(rss_anon, 1),
        "rss_file_mb": round(rss_file, 1),
        "runs": {"raw": len(raw), "inproc": len(inproc), "http": len(http)},
        "stdev_raw_ms": round(statistics.pstdev(raw), 4),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
