"""Pipeline overhead (issue 20): what running stages as one pipeline costs over calling the runtimes by hand.

Three workloads, models built here, one thread each:
- the demo's `digit-reader` (keys without suffix, the target's): a 24x24 canvas -> `locate` (the demo's digit
  locator, an ONNX graph on onnxruntime) -> `crop` (the built-in `crop_resize` to 8x8) -> `classify` (the demo's
  digits CNN, 2 epochs, TFLite on LiteRT) -> `pick` (`argmax`): what a user of the demo runs;
- `_dense`: `features` [1, 1024] -> ONNX 1024 -> 1024 -> 512 (ReLU) -> TFLite 512 -> 10 -> `topk` (k = 3);
- `_tiny`: the same at width 64 (about 20 microseconds of work in all), where the pipeline's fixed cost per call
  shows as a ratio. `pipeline_added_p50_us` is that fixed cost, workload aside.

- `pipeline_p50_ms`: `PipelineRunner.run` in process (the agent's path: input coercion, per-stage LoadedModel
  checks and (de)quantisation, the step, per-node timing).
- `raw_p50_ms`: the same work by hand: onnxruntime's `InferenceSession.run` and LiteRT's `Interpreter.invoke`
  straight (bench/raw_runtime.py's runners), then the same numpy glue (the same `topk` step object).
- `pipeline_p50_ratio` = pipeline / raw (target <= 1.10).
- `http_p50_ms`: `POST /v1/pipelines/bench/predict` on the agent's local API server (agent/httpserver.py, the
  real server the daemon runs, on loopback) with the standard library's keep-alive client (`http.client`, as
  light as the clients of other languages: curl, Go's net/http); `pipeline_http_added_p50_ms` = http - in-process
  p50 (target <= 1.0): JSON in and out, the HTTP layer, the client. `http_floor_p50_ms`: a `GET /healthz` on the
  same server with the same client in the same rounds (no body, no work): what the HTTP server, loopback and the
  client alone cost per call, below which `pipeline_http_added_p50_ms` cannot go.
- `..._httpx`: the same two calls with a keep-alive httpx client, reported beside: httpx itself costs about
  0.3 ms per call here (a `GET /healthz` over a raw socket answers in 0.055 ms, with `http.client` in 0.10 ms,
  with httpx in 0.39 ms), so these show what a Python caller using httpx sees.
Rounds alternate (raw, pipeline, http) so machine load weighs on each alike. Prints one JSON object.
"""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raw_runtime import raw_runner  # bench/, beside this script

if TYPE_CHECKING:
    from agent.pipeline.runner import PipelineRunner

ROUNDS = 10
CALLS = 300
TARGETS = {"pipeline_p50_ratio": 1.10, "pipeline_http_added_p50_ms": 1.0}
SPEC = """
name = "bench"
version = 1
[[inputs]]
name = "features"
shape = [1, WIDTH]
dtype = "float32"
[[stages]]
name = "embed"
model = "embed"
version = 1
inputs = { x = "inputs.features" }
[[stages]]
name = "head"
model = "head"
version = 1
inputs = { hidden = "embed.h" }
[[steps]]
name = "top3"
op = "topk"
params = { k = 3 }
inputs = { x = "head.logits" }
[outputs]
classes = "top3.indices"
scores = "top3.values"
"""


def build_models(work: Path, width: int) -> tuple[Path, Path]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    half = width // 2
    w1 = numpy_helper.from_array((rng.normal(size=(width, width)) / width**0.5).astype(np.float32), "W1")
    w2 = numpy_helper.from_array((rng.normal(size=(width, half)) / width**0.5).astype(np.float32), "W2")
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["a"]),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("MatMul", ["b", "W2"], ["c"]),
        helper.make_node("Relu", ["c"], ["h"]),
    ]
    graph = helper.make_graph(
        nodes,
        "embed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", half])],
        [w1, w2],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    embed = work / f"embed{width}.onnx"
    onnx.save(model, str(embed))

    from converter.sources import quiet_tensorflow

    tf = quiet_tensorflow()
    tf.keras.utils.set_random_seed(0)
    inp = tf.keras.Input((half,), name="hidden")
    keras_model = tf.keras.Model(inp, tf.keras.layers.Dense(10, name="logits")(inp))
    head = work / f"head{width}.tflite"
    head.write_bytes(tf.lite.TFLiteConverter.from_keras_model(keras_model).convert())
    return embed, head


def p50(samples: list[float]) -> float:
    return float(np.median(samples)) * 1000


def timed(fn: Callable[[], Any], calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def dense(work: Path, width: int) -> tuple[PipelineRunner, Callable[[], Any], dict[str, np.ndarray]]:
    """The dense pipeline at one width in process, its raw twin, one input."""
    from agent.model import LoadedModel
    from agent.pipeline.runner import PipelineRunner, stage_io
    from agent.pipeline.steps import make_step
    from protocol.pipeline import check_wiring, spec_from_toml

    with contextlib.redirect_stdout(sys.stderr):  # TensorFlow's converter prints; stdout is the JSON object's
        embed_path, head_path = build_models(work, width)
    models = {"embed": LoadedModel.from_file(embed_path), "head": LoadedModel.from_file(head_path)}
    # The TFLite model's tensor names are its signature's (e.g. `hidden`, `output_0`): wire them as they are.
    head_in, head_out = models["head"].inputs[0].name, models["head"].outputs[0].name
    text = SPEC.replace("WIDTH", str(width)).replace("hidden = ", f"{head_in} = ")
    spec = spec_from_toml(text.replace("head.logits", f"head.{head_out}"))
    check_wiring(spec, {k: stage_io(m) for k, m in models.items()})
    runner = PipelineRunner(spec, models)
    raw_embed, raw_head = raw_runner(embed_path, "onnx"), raw_runner(head_path, "tflite")
    glue = make_step(spec.steps[0].params)
    x = np.random.default_rng(1).random((1, width), dtype=np.float32)

    def raw() -> Any:
        return glue({"x": raw_head(raw_embed(x))})

    np.testing.assert_array_equal(raw()["indices"], runner.run({"features": x}).outputs["classes"])  # same answer
    return runner, raw, {"features": x}


def measure_runner(runner: PipelineRunner, raw: Callable[[], Any], inputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """p50s of raw, in-process pipeline and HTTP calls (two clients), rounds interleaved."""
    import http.client

    import httpx

    from agent.api import LocalApi
    from agent.httpserver import LocalApiServer, bind_tcp_socket
    from agent.metrics import AgentMetrics
    from agent.pipeline.inference import PipelineInference
    from agent.pipeline.serving import PipelineRegistry
    from agent.serving import ServingRegistry

    def piped() -> Any:
        return runner.run(inputs)

    registry = PipelineRegistry()
    registry.install("bench", 1, runner)
    api = LocalApi(ServingRegistry(), AgentMetrics(), list, lambda: {"status": "ok"},
                   pipelines=PipelineInference(registry))  # fmt: skip
    sock = bind_tcp_socket("127.0.0.1", 0)
    server = LocalApiServer(api, sock)
    server.start()
    port = sock.getsockname()[1]
    body = json.dumps({"inputs": {k: v.tolist() for k, v in inputs.items()}}).encode()
    headers = {"Content-Type": "application/json"}
    path = "/v1/pipelines/bench/predict"
    fns: dict[str, Callable[[], Any]] = {"raw": raw, "pipeline": piped}
    stdlib = http.client.HTTPConnection("127.0.0.1", port)

    def call(method: str, url: str, content: bytes | None) -> None:
        stdlib.request(method, url, body=content, headers=headers if content else {})
        reply = stdlib.getresponse()
        text = reply.read()
        assert reply.status == 200, text

    fns["http"] = lambda: call("POST", path, body)
    fns["floor"] = lambda: call("GET", "/healthz", None)  # no body, no work: the HTTP layers alone
    times: dict[str, list[float]] = {}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:

            def httpx_post() -> Any:
                r = client.post(path, content=body, headers=headers)
                assert r.status_code == 200, r.text

            def httpx_get() -> Any:
                r = client.get("/healthz")
                assert r.status_code == 200, r.text

            fns |= {"http_httpx": httpx_post, "floor_httpx": httpx_get}
            for fn in fns.values():  # warm up
                timed(fn, 50)
            for _ in range(ROUNDS):
                for key, fn in fns.items():
                    times.setdefault(key, []).extend(timed(fn, CALLS))
    finally:
        stdlib.close()
        server.stop()
    ms = {key: p50(samples) for key, samples in times.items()}
    return {
        "raw_p50_ms": round(ms["raw"], 4),
        "pipeline_p50_ms": round(ms["pipeline"], 4),
        "http_p50_ms": round(ms["http"], 4),
        "pipeline_p50_ratio": round(ms["pipeline"] / ms["raw"], 3),
        "pipeline_added_p50_us": round((ms["pipeline"] - ms["raw"]) * 1000, 1),
        "pipeline_http_added_p50_ms": round(ms["http"] - ms["pipeline"], 4),
        "http_floor_p50_ms": round(ms["floor"], 4),
        "pipeline_http_added_p50_ms_httpx": round(ms["http_httpx"] - ms["pipeline"], 4),
        "http_floor_p50_ms_httpx": round(ms["floor_httpx"], 4),
        "node_ms_one_call": {k: round(v, 4) for k, v in runner.run(inputs).node_ms.items()},
    }


DIGIT_READER = """
name = "digit-reader"
version = 1
[[inputs]]
name = "image"
shape = [1, 24, 24, 1]
dtype = "float32"
[[stages]]
name = "locate"
model = "digit-locator"
version = 1
inputs = { canvas = "inputs.image" }
[[steps]]
name = "crop"
op = "crop_resize"
params = { size = [8, 8], max_crops = 1 }
inputs = { image = "inputs.image", boxes = "locate.boxes" }
[[stages]]
name = "classify"
model = "digits"
version = 1
inputs = { CLASSIFIER_IN = "crop.crops" }
[[steps]]
name = "pick"
op = "argmax"
inputs = { x = "classify.CLASSIFIER_OUT" }
[outputs]
digit = "pick.out"
"""


def digit_reader(work: Path) -> tuple[PipelineRunner, Callable[[], Any], dict[str, np.ndarray]]:
    """The demo's pipeline in process, its raw twin (the runtimes by hand + the same step objects), one input."""
    from agent.model import LoadedModel
    from agent.pipeline.runner import PipelineRunner, stage_io
    from agent.pipeline.steps import make_step
    from converter.sources import quiet_tensorflow
    from edgefleet.samples import digit_canvases, digit_locator_onnx, digits, train_keras_cnn
    from protocol.pipeline import check_wiring, spec_from_toml

    data = digits()
    with contextlib.redirect_stdout(sys.stderr):
        locator = digit_locator_onnx(work / "locator.onnx", 24)
        keras_file = train_keras_cnn(work / "digits.keras", data, epochs=2, width=16)
        tf = quiet_tensorflow()
        classifier = work / "digits.tflite"
        classifier.write_bytes(
            tf.lite.TFLiteConverter.from_keras_model(tf.keras.models.load_model(keras_file)).convert()
        )
    models = {"locate": LoadedModel.from_file(locator), "classify": LoadedModel.from_file(classifier)}
    cls_in, cls_out = models["classify"].inputs[0].name, models["classify"].outputs[0].name
    spec = spec_from_toml(DIGIT_READER.replace("CLASSIFIER_IN", cls_in).replace("CLASSIFIER_OUT", cls_out))
    check_wiring(spec, {k: stage_io(m) for k, m in models.items()})
    runner = PipelineRunner(spec, models)
    raw_locate, raw_classify = raw_runner(locator, "onnx"), raw_runner(classifier, "tflite")
    crop, pick = (make_step(step.params) for step in spec.steps)
    image = digit_canvases(data.x_val[:1], 24, seed=3)[0]

    def raw() -> Any:
        crops = crop({"image": image, "boxes": raw_locate(image)})["crops"]
        return pick({"x": raw_classify(crops)})

    assert int(raw()["out"][0]) == int(runner.run({"image": image}).outputs["digit"][0])  # one answer both ways
    return runner, raw, {"image": image}


def main() -> None:
    result: dict[str, Any] = {"benchmark": "pipeline_overhead", "calls_each": ROUNDS * CALLS}
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-pipeline-") as tmp:
        result |= measure_runner(*digit_reader(Path(tmp)))
        result |= {f"{k}_dense": v for k, v in measure_runner(*dense(Path(tmp), 1024)).items()}
        result |= {f"{k}_tiny": v for k, v in measure_runner(*dense(Path(tmp), 64)).items()}
    result["targets"] = TARGETS
    result["machine"] = {"python": platform.python_version(), "machine": platform.machine(), "cpus": _cpus()}
    result["targets_met"] = {key: result[key] <= bound for key, bound in TARGETS.items()}
    result["meets_targets"] = all(result["targets_met"].values())
    print(json.dumps(result, indent=1))


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    main()
