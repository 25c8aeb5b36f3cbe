"""The agent's serving path with a cloud endpoint: each fallback reason, counted in telemetry and Prometheus.

The device model is a real onnxruntime model; the cloud is a real uvicorn server speaking TF Serving
REST (a stand-in answering fixed probabilities, enough to see which side answered).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agent.errors import InputError
from agent.fallback import EndpointConfig, FallbackPolicy, FallbackUnavailable
from agent.inference import InferenceService, NotServing
from agent.metrics import AgentMetrics
from agent.model import LoadedModel
from agent.serving import ServingRegistry
from agent.telemetry.recorders import Recorders
from tests.agent.builders import onnx_linear
from tests.agent.telemetry_support import classifier_manifest
from tests.fallback.servers import ServerThread

CLOUD = [0.05, 0.9, 0.05]


async def _predict(request: Request) -> JSONResponse:
    body = await request.json()
    return JSONResponse({"predictions": [CLOUD] * len(body["instances"])})


@pytest.fixture(scope="module")
def cloud() -> Iterator[ServerThread]:
    with ServerThread(Starlette(routes=[Route("/v1/models/{rest:path}", _predict, methods=["POST"])])) as s:
        yield s


def _service(tmp_path: Path, url: str, policy: FallbackPolicy, *, install: bool = True,
             self_test_failed: bool = False) -> tuple[InferenceService, Recorders]:  # fmt: skip
    art = onnx_linear(tmp_path / "m.onnx", seed=1)
    manifest = classifier_manifest(art)
    serving = ServingRegistry()
    if install:
        serving.install("demo", 1, LoadedModel.from_file(art, manifest=manifest))
    recorders = Recorders("dev-1", "x86_gateway", window_size=1000, window_seconds=3600)
    endpoint = EndpointConfig(type="tfserving", url=url, model="demo", version=1)
    service = InferenceService(
        serving, AgentMetrics(), recorders, endpoints={"demo": endpoint}, policies={"demo": policy},
        self_test_failed=lambda _name: self_test_failed, manifest_of=lambda _name: manifest,
    )  # fmt: skip
    return service, recorders


def test_data_quality_and_low_confidence_go_to_the_cloud(tmp_path: Path, cloud: ServerThread) -> None:
    service, recorders = _service(tmp_path, cloud.url, FallbackPolicy(min_confidence=0.99))
    x = np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32)
    low = service.predict("demo", {"x": x})  # the local top-1 score is below 0.99
    assert (low.source, low.reason, low.version) == ("cloud", "low_confidence", 1)
    assert np.allclose(low.outputs["y"], [CLOUD] * 2) and len(low.prediction_ids) == 2
    x[0, 1] = np.nan
    dq = service.predict("demo", {"x": x})
    assert (dq.source, dq.reason) == ("cloud", "data_quality")
    with pytest.raises(InputError):  # the caller's mistake goes back to the caller, not to the cloud
        service.predict("demo", {"x": [[1.0, 2.0]]})
    summary = recorders.close(all_windows=True)[0]
    assert summary.n == 4 and summary.fallback == {"low_confidence": 1, "data_quality": 1}
    assert summary.inputs[1].missing == 1  # the NaN is in the window's data-quality counts
    text = generate_latest(service.metrics.registry).decode()
    assert 'edgefleet_agent_fallback_total{model="demo",outcome="ok",reason="data_quality"} 1.0' in text


def test_device_answers_when_the_policy_says_so(tmp_path: Path, cloud: ServerThread) -> None:
    service, _ = _service(tmp_path, cloud.url, FallbackPolicy(on_data_quality=False))
    answer = service.predict("demo", {"x": [[0.1, 0.2, 0.3, 0.4]]})
    assert (answer.source, answer.version, answer.reason) == ("device", 1, None)
    assert "fallback_reason" not in answer.to_json() and answer.to_json()["source"] == "device"


def test_self_test_failed_without_a_previous_model(tmp_path: Path, cloud: ServerThread) -> None:
    service, recorders = _service(tmp_path, cloud.url, FallbackPolicy(), install=False, self_test_failed=True)
    answer = service.predict("demo", {"x": [[0.1, 0.2, 0.3, 0.4]]})
    assert (answer.source, answer.reason, answer.version) == ("cloud", "self_test_failed", 1)
    summary = recorders.close(all_windows=True)[0]
    assert (summary.model, summary.version, summary.fallback, summary.errors) == ("demo", 1, {"self_test_failed": 1}, 0)
    # The cloud round trip is in the summary too, so the hub sees fallback latency without scraping devices.
    assert sum(summary.fallback_latency_buckets) == 1 and summary.fallback_latency_ms(0.5) is not None
    assert summary.fallback_errors == {}


def test_fallback_off_for_a_reason_is_a_clear_error(tmp_path: Path, cloud: ServerThread) -> None:
    service, recorders = _service(tmp_path, cloud.url, FallbackPolicy(on_no_model=False), install=False)
    with pytest.raises(FallbackUnavailable, match="fallback for no_model is off") as info:
        service.predict("demo", {"x": [[0.1, 0.2, 0.3, 0.4]]})
    assert info.value.reason == "no_model"
    refused = recorders.close(all_windows=True)[0]
    assert refused.errors == 1 and refused.fallback_errors == {"no_model": 1}
    with pytest.raises(NotServing):
        service.predict("other", {"x": [[0.0] * 4]})
