"""Local API over its real HTTP server: delayed labels -> accuracy in the next summary; drift view and gauges."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent.daemon import Agent
from protocol.messages import CommandKind
from tests.agent.harness import Observer, agent_settings, local_api, wait_for
from tests.agent.hubstub import HubStub
from tests.agent.telemetry_support import install_classifier, observed

pytestmark = pytest.mark.integration


@pytest.fixture
def api(tmp_path: Path, hub: HubStub, observer: Observer, unique_root: str) -> Iterator[tuple[str, Agent]]:
    # Large windows: only the flush_telemetry command closes one.
    telemetry = {"window_size": 10_000, "window_s": 3600, "tick_s": 0.05}
    agent = Agent(agent_settings(tmp_path / "device", hub, unique_root, telemetry=telemetry))
    agent.start()
    install_classifier(hub, observer, tmp_path)
    wait_for(lambda: agent.serving.get("demo"), what="classifier serving")
    with local_api(agent) as url:
        yield url, agent
    agent.stop()


def test_feedback_folds_into_the_next_summary(api: tuple[str, Agent], observer: Observer) -> None:
    url, _ = api
    x = np.random.default_rng(1).normal(size=(6, 4)).round(3).tolist()
    r = httpx.post(f"{url}/v1/models/demo/predict", json={"inputs": {"x": x}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["source"] == "device" and body["version"] == 1 and len(body["prediction_ids"]) == 6
    predicted = np.asarray(body["outputs"]["y"]).argmax(axis=1)
    # Four right, two wrong labels.
    labels = [int(p) if i < 4 else (int(p) + 1) % 3 for i, p in enumerate(predicted)]
    for pid, label in zip(body["prediction_ids"], labels, strict=True):
        fb = httpx.post(f"{url}/v1/models/demo/feedback", json={"prediction_id": pid, "label": label})
        assert fb.status_code == 200, fb.text
    again = httpx.post(f"{url}/v1/models/demo/feedback", json={"prediction_id": body["prediction_ids"][0], "label": 0})
    assert again.status_code == 404 and "unknown" in again.json()["error"]
    bad = httpx.post(f"{url}/v1/models/demo/feedback", json={"prediction_id": "1-1", "label": "cat"})
    assert bad.status_code == 422 and "label" in bad.json()["error"]
    assert httpx.post(f"{url}/v1/models/demo/feedback", content=b"{oops").status_code == 400

    drift = httpx.get(f"{url}/v1/models/demo/drift").json()
    assert drift["window"] == "current" and drift["n"] == 6 and drift["accuracy"] == pytest.approx(4 / 6)
    assert [f["name"] for f in drift["features"]] == [f"x[{i}]" for i in range(4)]
    assert drift["classes"]["name"] == "predicted_class"
    assert httpx.get(f"{url}/v1/models/nope/drift").status_code == 404

    observer.command("dev-1", CommandKind.FLUSH_TELEMETRY)
    message = wait_for(lambda: next(iter(observed(observer)), None), what="flushed summary")
    summary = message.summary
    assert summary.n == 6 and summary.accuracy() == pytest.approx(4 / 6)
    assert summary.confusion is not None and sum(map(sum, summary.confusion)) == 6
    assert summary.class_counts is not None and sum(summary.class_counts) == 6
    assert [f.name for f in summary.inputs] == [f"x[{i}]" for i in range(4)]
    assert sum(summary.inputs[0].counts) == 6  # values outside the baseline range are binned and counted too
    metrics = wait_for(lambda: (t := httpx.get(f"{url}/metrics").text) and "edgefleet_agent_drift_score{" in t and t)
    assert 'edgefleet_agent_window_accuracy{model="demo"} 0.66' in metrics
    last = httpx.get(f"{url}/v1/models/demo/drift").json()
    assert last["window"] == "last" and last["n"] == 6
