"""Cloud fallback per pipeline, against a real KServe v2 server: MLServer (its own venv) serving the whole
pipeline as one ONNX model, as a Triton ensemble or a KServe inference graph would in production.

The device answers once its pipeline serves; before that (nothing installed, or the only version failed its
self-test) the cloud does, with the reason; with no spec known yet the answer is a clear 503."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from agent.pipeline.golden import make_golden
from agent.pipeline.local import local_runner
from protocol.messages import DesiredPipeline, DesiredState
from protocol.pipeline import PipelineManifest, PipelineStage, pipeline_target, spec_from_toml
from protocol.telemetry import decode_message
from protocol.topics import Channel
from tests.agent.builders import make_manifest, onnx_linear
from tests.agent.harness import Observer, local_api, wait_for
from tests.agent.hubstub import HubStub
from tests.fallback.servers import mlserver

pytestmark = pytest.mark.integration

SPEC = """
name = "chain"
version = 1
[[inputs]]
name = "features"
shape = [1, 4]
dtype = "float32"
[[stages]]
name = "first"
model = "lin-a"
version = 1
inputs = { x = "inputs.features" }
[[stages]]
name = "second"
model = "lin-b"
version = 1
inputs = { x = "first.y" }
[outputs]
scores = "second.y"
"""
X = np.array([[0.5, -1.0, 0.25, 2.0]], dtype=np.float32)


def whole_pipeline_onnx(path: Path, a: Path, b: Path) -> Path:
    """One ONNX graph computing both stages (what the cloud serves as the pipeline): features -> scores."""
    ma, mb = onnx.load(str(a)), onnx.load(str(b))
    wa, ba = (numpy_helper.to_array(t) for t in ma.graph.initializer)
    wb, bb = (numpy_helper.to_array(t) for t in mb.graph.initializer)
    nodes = [
        helper.make_node("MatMul", ["features", "WA"], ["a0"]),
        helper.make_node("Add", ["a0", "BA"], ["a1"]),
        helper.make_node("MatMul", ["a1", "WB"], ["b0"]),
        helper.make_node("Add", ["b0", "BB"], ["scores"]),
    ]
    inits = [numpy_helper.from_array(v, n) for v, n in ((wa, "WA"), (ba, "BA"), (wb, "WB"), (bb, "BB"))]
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def publish(hub: HubStub, tmp_path: Path, a: Path, b: Path, *, broken: bool) -> str:
    """The pipeline into the stub hub's TUF repository; `broken`: stage `second`'s golden cases are another
    model's, so its self-test fails on the device (and there is no earlier version to return to)."""
    other = onnx_linear(tmp_path / "other.onnx", n_in=3, n_out=2, seed=77) if broken else None
    ma = make_manifest(a, name="lin-a", version=1)
    mb = make_manifest(b, name="lin-b", version=1, golden_from=other)
    stages = {
        "first": PipelineStage(model="lin-a", version=1, manifest_target=hub.publish(ma, a)),
        "second": PipelineStage(model="lin-b", version=1, manifest_target=hub.publish(mb, b)),
    }
    spec = spec_from_toml(SPEC)
    golden = make_golden(local_runner(spec, {"first": a, "second": b}), [{"features": X}], atol=1e-4)
    manifest = PipelineManifest(spec=spec, profile="x86_gateway", stages=stages, golden=golden)
    target = pipeline_target("chain", 1, "x86_gateway")
    hub.repo.add_targets({target: manifest.to_bytes()})
    return target


def desire(observer: Observer, target: str) -> None:
    state = DesiredState(
        device_id="dev-1",
        generation=1,
        pipelines=[DesiredPipeline(name="chain", version=1, pipeline_target=target)],
        issued_at=datetime.now(UTC),
    )
    observer.publish("dev-1", Channel.DESIRED, state.to_bytes(), retain=True)


def reported(observer: Observer) -> dict[str, Any] | None:
    state = observer.last_reported()
    return next((p for p in (state or {}).get("pipelines", []) if p["name"] == "chain"), None)


@pytest.mark.parametrize("broken", [True, False])
def test_the_cloud_answers_for_a_pipeline_that_does_not_serve_here(
    broken: bool, tmp_path: Path, hub: HubStub, observer: Observer, make_agent: Any
) -> None:
    a = onnx_linear(tmp_path / "a.onnx", n_in=4, n_out=3, seed=1)
    b = onnx_linear(tmp_path / "b.onnx", n_in=3, n_out=2, seed=2)
    expected = local_runner(spec_from_toml(SPEC), {"first": a, "second": b}).run({"features": X}).outputs["scores"]
    with mlserver(tmp_path / "cloud", whole_pipeline_onnx(tmp_path / "chain.onnx", a, b), "chain", 1) as url:
        endpoint = {"type": "kserve", "url": url, "model": "chain", "version": 1, "timeout_s": 10}
        agent = make_agent(pipeline_fallback={"chain": endpoint})
        with local_api(agent) as base:
            body = {"inputs": {"features": X.tolist()}}
            early = httpx.post(f"{base}/v1/pipelines/chain/predict", json=body, timeout=30)
            assert early.status_code == 503 and "its spec is not known yet" in early.json()["error"], early.text

            desire(observer, publish(hub, tmp_path, a, b, broken=broken))
            state = "rolled_back" if broken else "committed"
            wait_for(lambda: (r := reported(observer)) is not None and r["state"] == state, what=f"pipeline {state}")
            answer = httpx.post(f"{base}/v1/pipelines/chain/predict", json=body, timeout=30)
            assert answer.status_code == 200, answer.text
            data = answer.json()
            np.testing.assert_allclose(data["outputs"]["scores"], expected, rtol=1e-5, atol=1e-5)
            if broken:  # no version serves here: the whole pipeline is answered by MLServer
                assert (data["source"], data["fallback_reason"], data["timings_ms"]) == (
                    "cloud",
                    "self_test_failed",
                    {},
                )
            else:
                assert (
                    data["source"] == "device"
                    and data["version"] == 1
                    and set(data["timings_ms"])
                    == {
                        "first",
                        "second",
                    }
                )
        agent.uplink.flush()  # the call counted end to end in the pipeline's own window, whoever answered it

        def whole() -> Any:
            found = [decode_message(p).summary for p in observer.raw(Channel.TELEMETRY)]
            return next((w for w in found if (w.unit, w.model, w.version) == ("pipeline", "chain", 1)), None)

        window = wait_for(whole, what="the pipeline's end-to-end window")
        assert (window.n, window.errors) == (1, 0)
        if broken:
            assert window.fallback == {"self_test_failed": 1} and sum(window.fallback_latency_buckets) == 1
        else:
            assert window.fallback == {} and sum(window.latency_buckets) == 1
