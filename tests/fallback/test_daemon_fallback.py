"""`/predict` on the daemon falls back to a real TorchServe serving the converter's .mar.

No local model yet -> source=cloud; once the converter's artifact is installed -> source=device, and
the two answers agree within what the converter measured. Offline or breaker open -> a fast 503/504
with a clear message, never a hang.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from agent.daemon import Agent
from agent.httpserver import LocalApiServer, bind_tcp_socket
from protocol import layout
from protocol.manifest import Manifest
from tests.agent.conftest import hub, observer  # noqa: F401 - fixtures: a real TUF hub stub, an MQTT observer
from tests.agent.harness import Observer, agent_settings, wait_for
from tests.agent.hubstub import HubStub
from tests.agent.ports import listen_port
from tests.fallback.servers import DroppingEndpoint, torchserve
from tests.support.broker import Broker
from tests.support.converted import Converted

pytestmark = [pytest.mark.slow, pytest.mark.integration]
NAME = "digits-torch"


def _serve_api(agent: Agent) -> tuple[str, LocalApiServer]:
    port = listen_port()
    server = LocalApiServer(agent.local_api(), bind_tcp_socket("127.0.0.1", port))
    server.start()
    return f"http://127.0.0.1:{port}", server


def test_predict_falls_back_to_torchserve_until_the_model_is_installed(
    torch_converted: Converted,
    tmp_path: Path,
    hub: HubStub,  # noqa: F811
    observer: Observer,  # noqa: F811
    broker: Broker,
    unique_root: str,
) -> None:
    folder = torch_converted.out / "x86_gateway"
    manifest = Manifest.from_json((folder / layout.MANIFEST_FILE).read_text())
    mar = torch_converted.out / layout.TORCHSERVE_DIR / f"{NAME}.mar"
    x = torch_converted.data.x_val[:8]
    with torchserve(tmp_path / "ts", mar, NAME) as ts_url:
        endpoint = {"type": "torchserve", "url": ts_url, "model": NAME, "version": 1, "timeout_s": 10}
        down = DroppingEndpoint()
        down_endpoint = {"type": "torchserve", "url": down.url, "model": NAME, "retries": 0,
                         "breaker_failures": 1, "breaker_reset_s": 60}  # fmt: skip
        settings = agent_settings(
            tmp_path / "device", hub, unique_root, telemetry={"tick_s": 0.05},
            fallback={NAME: endpoint, "ghost": endpoint, "down": down_endpoint},
        )  # fmt: skip
        agent = Agent(settings)
        agent.start()
        url, server = _serve_api(agent)
        try:
            wait_for(agent.mqtt.connected.is_set, what="mqtt")
            body = {"inputs": {manifest.inputs[0].name: x.tolist()}}
            cloud = httpx.post(f"{url}/v1/models/{NAME}/predict", json=body, timeout=30)
            assert cloud.status_code == 200, cloud.text
            answer = cloud.json()
            assert (answer["source"], answer["version"], answer["fallback_reason"]) == ("cloud", 1, "no_model")

            observer.desire("dev-1", 1, [(NAME, 1, hub.publish(manifest, folder / manifest.artifact.file), False)])
            wait_for(lambda: any(e["version"] == 1 for e in observer.events("committed")), what="committed", timeout=60)
            device = httpx.post(f"{url}/v1/models/{NAME}/predict", json=body, timeout=30).json()
            assert (device["source"], device["version"]) == ("device", 1) and "fallback_reason" not in device
            out = manifest.outputs[0].name
            local, remote = np.asarray(device["outputs"][out]), np.asarray(answer["outputs"]["output"])
            assert local.shape == remote.shape == (8, 10)
            assert float(np.abs(local - remote).max()) <= (manifest.report.chosen.max_abs_error or 0) + 1e-4
            metrics = httpx.get(f"{url}/metrics").text
            assert f'edgefleet_agent_fallback_total{{model="{NAME}",outcome="ok",reason="no_model"}} 1.0' in metrics

            # Breaker: the first call fails (the endpoint drops the connection), the second without the network.
            first = httpx.post(f"{url}/v1/models/down/predict", json=body, timeout=30)
            assert first.status_code in (502, 504) and "cloud fallback failed" in first.json()["error"]
            assert down.accepted == 1  # retries 0: one connection
            second = httpx.post(f"{url}/v1/models/down/predict", json=body, timeout=30)
            assert second.status_code == 503 and "circuit open" in second.json()["error"]
            assert down.accepted == 1  # the open circuit answered without connecting

            broker.stop()  # offline: no cloud call at all, a clear 503 at once
            wait_for(lambda: not agent.mqtt.connected.is_set(), what="offline")
            offline = httpx.post(f"{url}/v1/models/ghost/predict", json=body, timeout=30)  # sends nothing: see
            assert offline.status_code == 503 and "device offline" in offline.json()["error"]  # test_failures.py
            assert offline.json()["fallback_reason"] == "no_model"
            assert httpx.post(f"{url}/v1/models/ghost/predict", content=b"{", timeout=5).status_code == 400
            assert httpx.post(f"{url}/v1/models/unknown/predict", json=body, timeout=5).status_code == 404
        finally:
            server.stop()
            agent.stop()
            down.close()
