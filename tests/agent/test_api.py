"""Local API over its real HTTP server: predict, bad input 4xx, healthz, models, metrics, rollback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.daemon import Agent
from tests.agent.builders import make_manifest, onnx_linear, onnx_multi
from tests.agent.harness import Observer, agent_settings, local_api, wait_for
from tests.agent.hubstub import HubStub

pytestmark = pytest.mark.integration


@pytest.fixture
def api(tmp_path: Path, hub: HubStub, observer: Observer, unique_root: str) -> Iterator[tuple[str, Agent]]:
    agent = Agent(agent_settings(tmp_path / "device", hub, unique_root))
    agent.start()
    for version, builder in ((1, onnx_linear), (2, onnx_linear)):
        art = builder(tmp_path / f"lin_v{version}.onnx", seed=version)
        target = hub.publish(make_manifest(art, name="demo", version=version), art)
        observer.desire("dev-1", version, [("demo", version, target, False)])
        wait_for(lambda v=version: any(e["version"] == v for e in observer.events("committed")), what=f"v{version}")
    multi = onnx_multi(tmp_path / "multi.onnx")
    observer.desire(
        "dev-1",
        3,
        [("demo", 2, target, False), ("multi", 1, hub.publish(make_manifest(multi, name="multi"), multi), False)],
    )
    wait_for(lambda: agent.serving.get("multi"), what="multi served")
    with local_api(agent) as url:
        yield url, agent
    agent.stop()


def test_predict_and_introspection(api: tuple[str, Agent]) -> None:
    url, _ = api
    r = httpx.post(f"{url}/v1/models/demo/predict", json={"inputs": {"x": [[1, 2, 3, 4], [0, 0, 0, 0]]}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == 2 and len(body["outputs"]["y"]) == 2 and len(body["outputs"]["y"][0]) == 3
    r = httpx.post(f"{url}/v1/models/multi/predict", json={"inputs": {"a": [[1, 2]], "b": [[1, 1, 1]]}})
    assert r.status_code == 200 and r.json()["outputs"]["d"] == [[2.0, 2.0, 2.0]]
    health = httpx.get(f"{url}/healthz").json()
    assert health["status"] == "ok" and health["serving"] == {"demo": 2, "multi": 1}
    models = {m["name"]: m for m in httpx.get(f"{url}/v1/models").json()["models"]}
    assert (models["demo"]["active_version"], models["demo"]["previous_version"], models["demo"]["state"]) == (
        2,
        1,
        "committed",
    )
    metrics = httpx.get(f"{url}/metrics").text
    assert 'edgefleet_agent_predictions_total{model="demo"} 1.0' in metrics
    assert 'edgefleet_agent_active_version{model="demo"} 2.0' in metrics


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"not json", 400, "not JSON"),
        (b'{"x": 1}', 422, "inputs"),
        (b'{"inputs": {"x": [[1, 2, 3]]}}', 422, "dim 1 is 3, expected 4"),
        (b'{"inputs": {"x": [["a", "b", "c", "d"]]}}', 422, "not numeric"),
        (b'{"inputs": {"q": [[1, 2, 3, 4]]}}', 422, "unknown input(s): q; the model takes x (missing: x)"),
        (b'{"inputs": {"x": [[1, 2], [3]]}}', 422, "not a numeric array"),
    ],
)
def test_bad_input_is_4xx_with_message(api: tuple[str, Agent], body: bytes, status: int, message: str) -> None:
    url, _ = api
    r = httpx.post(f"{url}/v1/models/demo/predict", content=body)
    assert r.status_code == status and message in r.json()["error"]


def test_json_the_strict_parser_refuses_is_read_by_the_standard_one(api: tuple[str, Agent]) -> None:
    """Bodies are parsed with orjson first (fast, RFC 8259 only); what Python's json also reads (UTF-16, NaN,
    1e400) gets the answers it got before the fast parser came in."""
    url, _ = api
    plain = httpx.post(f"{url}/v1/models/demo/predict", json={"inputs": {"x": [[1, 2, 3, 4]]}})
    assert plain.status_code == 200, plain.text
    utf16 = json.dumps({"inputs": {"x": [[1, 2, 3, 4]]}}).encode("utf-16")
    r = httpx.post(f"{url}/v1/models/demo/predict", content=utf16)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == plain.json()["outputs"]
    for literal in (b"NaN", b"1e400"):
        r = httpx.post(f"{url}/v1/models/demo/predict", content=b'{"inputs": {"x": [[%s, 1, 2, 3]]}}' % literal)
        assert r.status_code == 422 and "inputs hold NaN or inf" in r.json()["error"], (literal, r.text)


def test_unknown_model_404_and_rollback_route(api: tuple[str, Agent]) -> None:
    url, agent = api
    assert httpx.post(f"{url}/v1/models/nope/predict", json={"inputs": {}}).status_code == 404
    assert httpx.post(f"{url}/v1/models/nope/rollback").status_code == 404
    assert httpx.post(f"{url}/v1/models/demo/rollback").status_code == 202
    wait_for(lambda: agent.serving.get("demo").version == 1, what="rolled back via the local API")  # type: ignore[union-attr]
    assert "edgefleet_agent_prediction_errors_total" in httpx.get(f"{url}/metrics").text


def test_status_and_rollback_cli_talk_to_the_local_api(api: tuple[str, Agent], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from edgefleet.cli import cli

    url, agent = api
    config = tmp_path / "cli.toml"
    config.write_text(f'profile = "x86_gateway"\napi_port = {url.rsplit(":", 1)[1]}\n')
    res = CliRunner().invoke(cli, ["agent", "status", "--config", str(config)])
    assert res.exit_code == 0 and "demo: active v2, previous v1, state committed" in res.output
    res = CliRunner().invoke(cli, ["agent", "rollback", "demo", "--config", str(config)])
    assert res.exit_code == 0 and "rollback of demo queued" in res.output
    wait_for(lambda: agent.serving.get("demo").version == 1, what="rolled back")  # type: ignore[union-attr]
    res = CliRunner().invoke(cli, ["agent", "rollback", "nope", "--config", str(config)])
    assert res.exit_code == 1 and "no model named 'nope'" in res.output
