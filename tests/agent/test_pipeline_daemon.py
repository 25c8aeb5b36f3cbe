"""A pipeline version through a real agent: TUF-signed stage set from a real TUF repository over HTTP, desired
state over a real broker, activation as one unit, end-to-end self-test, rollback of the whole set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner

from agent.pipeline.local import local_runner
from edgefleet.cli import cli
from protocol.pipeline import spec_from_toml
from protocol.telemetry import decode_message
from protocol.topics import Channel
from tests.agent.harness import Observer, local_api, wait_for
from tests.agent.hubstub import HubStub
from tests.agent.pipelines import PROFILE, SAMPLES, SPEC, desire, pipeline_report, publish_pipeline, settled

pytestmark = pytest.mark.integration


def test_a_pipeline_version_installs_as_one_unit_and_answers_through_the_local_api(
    tmp_path: Path, hub: HubStub, observer: Observer, make_agent: Any, tflite_paths: dict[str, Path]
) -> None:
    target, artifacts = publish_pipeline(hub, tmp_path, tflite_paths["float"], 1)
    agent = make_agent(profile=PROFILE)
    desire(observer, 1, [(1, target)])
    wait_for(settled(observer, "committed", 1), what="pipeline v1 committed")

    spec = spec_from_toml(SPEC.format(version=1))
    expected = local_runner(spec, artifacts).run(SAMPLES[0]).outputs
    answer = agent.predict_pipeline("mixed", SAMPLES[0])
    assert (answer.version, answer.source) == (1, "device")
    np.testing.assert_allclose(answer.outputs["scores"], expected["scores"], rtol=1e-6)
    assert set(answer.node_ms) == {"embed", "head", "label"}
    # The reported state (published at once) can arrive before the events (sent through the outbox): wait for them.
    def kinds() -> list[str]:
        return [e["kind"] for e in sorted(observer.events(), key=lambda e: e["seq"]) if e.get("pipeline") == "mixed"]

    wait_for(lambda: "committed" in kinds(), what="the pipeline's committed event")
    order = kinds()
    assert (
        order.index("verified") < order.index("activated") < order.index("self_test_passed") < order.index("committed")
    )
    assert all(e.get("model") is None for e in observer.events() if e.get("pipeline") == "mixed")

    with local_api(agent) as base:
        body = {"inputs": {"features": SAMPLES[0]["features"].tolist()}}
        answer = httpx.post(f"{base}/v1/pipelines/mixed/predict", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        data = answer.json()
        assert data["pipeline"] == "mixed" and data["version"] == 1
        np.testing.assert_allclose(data["outputs"]["scores"], expected["scores"], rtol=1e-6)
        assert set(data["timings_ms"]) == {"embed", "head", "label"}
        listed = httpx.get(f"{base}/v1/pipelines", timeout=10).json()["pipelines"]
        assert listed[0]["stages"] == {
            "embed": {"model": "dense", "version": 1},
            "head": {"model": "linear", "version": 1},
        }
        bad = httpx.post(f"{base}/v1/pipelines/mixed/predict", json={"inputs": {"feature": [0] * 6}}, timeout=10)
        assert bad.status_code == 422 and "unknown input(s): feature" in bad.json()["error"]
        missing = httpx.post(f"{base}/v1/pipelines/nope/predict", json={"inputs": {}}, timeout=10)
        assert missing.status_code == 404 and "no pipeline named 'nope'" in missing.json()["error"]

        # `edgefleet agent predict --pipeline NAME` asks the running daemon (its local API, from agent.toml).
        port = int(base.rsplit(":", 1)[1])
        config = tmp_path / "cli-agent.toml"
        config.write_text(f'profile = "{PROFILE}"\nhub_url = "http://127.0.0.1:9"\nallow_insecure_http = true\n'
                          f'data_dir = "{tmp_path / "cli-data"}"\napi_port = {port}\n')  # fmt: skip
        np.savez(tmp_path / "in.npz", features=SAMPLES[0]["features"])
        args = ["agent", "predict", "--pipeline", "mixed", str(tmp_path / "in.npz"), "--config", str(config)]
        said = CliRunner().invoke(cli, args)
        assert said.exit_code == 0, said.output
        assert "pipeline mixed v1:" in said.output and "label" in said.output
        wrong = CliRunner().invoke(cli, [*args[:3], "nope", *args[4:]])
        assert wrong.exit_code == 1 and "no pipeline named 'nope' is serving" in wrong.output
        status = CliRunner().invoke(cli, ["agent", "status", "--config", str(config)])
        assert status.exit_code == 0 and "pipeline mixed: active v1, previous none, state committed" in status.output


def test_agent_status_says_when_nothing_is_installed(tmp_path: Path, make_agent: Any) -> None:
    agent = make_agent(profile=PROFILE)
    with local_api(agent) as base:
        config = tmp_path / "cli-agent.toml"
        config.write_text(f'profile = "{PROFILE}"\napi_port = {base.rsplit(":", 1)[1]}\n')
        said = CliRunner().invoke(cli, ["agent", "status", "--config", str(config)])
    assert said.exit_code == 0 and said.output.startswith("no model installed"), said.output


def test_each_stage_reports_its_own_telemetry_window(
    tmp_path: Path, hub: HubStub, observer: Observer, make_agent: Any, tflite_paths: dict[str, Path]
) -> None:
    """Each stage's inputs, outputs and latency go into its model version's window (drift against the stage's own
    baseline on the hub); each call end to end into the pipeline version's own window (unit "pipeline") and
    Prometheus."""
    target, _ = publish_pipeline(hub, tmp_path, tflite_paths["float"], 1)
    agent = make_agent(profile=PROFILE)
    desire(observer, 1, [(1, target)])
    wait_for(settled(observer, "committed", 1), what="pipeline v1 committed")
    calls = 7
    for i in range(calls):
        agent.predict_pipeline("mixed", SAMPLES[i % len(SAMPLES)])
    with pytest.raises(Exception, match="unknown input"):
        agent.predict_pipeline("mixed", {"feature": [0.0] * 6})  # refused before it runs: not a call of v1
    agent.uplink.flush()

    def windows() -> dict[tuple[str, str, int], Any]:
        found = {}
        for payload in observer.raw(Channel.TELEMETRY):
            summary = decode_message(payload).summary
            found[(summary.unit, summary.model, summary.version)] = summary
        return found

    wanted = {("model", "dense", 1), ("model", "linear", 1), ("pipeline", "mixed", 1)}
    got = wait_for(lambda: (w := windows()) and wanted <= w.keys() and w, what="stage and pipeline windows")
    for key in (("model", "dense", 1), ("model", "linear", 1)):
        # (the test manifests' baselines are placeholders, so no feature bins here; binning is the model path's)
        assert got[key].n == calls and sum(got[key].latency_buckets) == calls
    whole = got[("pipeline", "mixed", 1)]
    assert (whole.n, whole.errors, sum(whole.latency_buckets), whole.inputs) == (calls, 0, calls, [])
    stage_p50 = max(got[("model", m, 1)].latency_ms(0.5) or 0 for m in ("dense", "linear"))
    assert (whole.latency_ms(0.5) or 0) >= stage_p50  # the whole call takes at least its slowest stage
    scraped = agent.metrics.registry.get_sample_value(
        "edgefleet_agent_predict_seconds_count", {"model": "pipeline:mixed"}
    )
    assert scraped == calls


def test_a_failing_stage_rolls_the_whole_set_back_with_the_stage_named(
    tmp_path: Path, hub: HubStub, observer: Observer, make_agent: Any, tflite_paths: dict[str, Path]
) -> None:
    t1, _ = publish_pipeline(hub, tmp_path, tflite_paths["float"], 1)
    t2, _ = publish_pipeline(hub, tmp_path, tflite_paths["float"], 2, broken_head=True)
    agent = make_agent(profile=PROFILE)
    desire(observer, 1, [(1, t1)])
    wait_for(settled(observer, "committed", 1), what="pipeline v1 committed")
    desire(observer, 2, [(2, t2)])
    wait_for(settled(observer, "rolled_back", 1), what="pipeline v2 rolled back to v1")
    report = pipeline_report(observer)
    assert report is not None
    assert "stage 'head' (linear v2)" in report["reason"] and "NaN" in report["reason"]
    failed = observer.events_when("self_test_failed", lambda e: e.get("pipeline") == "mixed")
    assert failed and failed[-1]["version"] == 2 and "stage 'head'" in failed[-1]["reason"]
    answer = agent.predict_pipeline("mixed", SAMPLES[0])
    assert answer.version == 1 and np.isfinite(answer.outputs["scores"]).all()
    # Every stage of v1 serves, and nothing of v2: the embed stage of v2 passed its own self-test but never served.
    served = agent.pipelines.served.get("mixed")
    assert served is not None
    assert {s: (m.manifest.name, m.manifest.version) for s, m in served.runner.models.items() if m.manifest} == {
        "embed": ("dense", 1),
        "head": ("linear", 1),
    }
    assert agent.pipelines.store.slot_version("mixed", "active") == 1
    assert not agent.pipelines.store.version_dir("mixed", 2).exists()


def test_a_pipeline_left_out_of_the_desired_state_is_uninstalled(
    tmp_path: Path, hub: HubStub, observer: Observer, make_agent: Any, tflite_paths: dict[str, Path]
) -> None:
    target, _ = publish_pipeline(hub, tmp_path, tflite_paths["float"], 1)
    agent = make_agent(profile=PROFILE)
    desire(observer, 1, [(1, target)])
    wait_for(settled(observer, "committed", 1), what="pipeline v1 committed")
    desire(observer, 2, [])
    wait_for(lambda: pipeline_report(observer) is None, what="pipeline gone from the reported state")
    assert agent.pipelines.served.get("mixed") is None
    assert not (agent.settings.data_dir / "pipelines" / "mixed").exists()
    gone = observer.events_when("uninstalled", lambda e: e.get("pipeline") == "mixed")
    assert gone and gone[-1]["version"] == 1
