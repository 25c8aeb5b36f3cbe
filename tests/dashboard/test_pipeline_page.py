"""The pipelines pages in headless Chromium against a hub of their own: a pipeline pushed through the API (two real
ONNX stages), rolled out to simulated devices, stage telemetry uploaded over MQTT; what the pages show is checked
against the API and against the latency buckets and feature counts the test sent.

Its own hub, not the shared dashboard fleet: these models, rollouts and drifting windows would change the numbers
the other dashboard tests check. Devices: a-0, a-1 (group alpha) run sorter v1 and upload stage telemetry; b-0
(beta) runs sorter v2 and uploads nothing; solo runs no pipeline but serves encoder v1 alone, slowly, which the
pipeline's latency must leave out.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from playwright.sync_api import Page
from pydantic import ValidationError

from edgefleet.simdevice import SimDevice, now
from hub.api.main import create_app
from hub.dashboard import pipelines_page
from hub.settings import HubSettings
from hub.telemetry.stats import quantile_ms
from protocol.http import ENROLL_PATH, EnrollResponse
from protocol.layout import MANIFEST_FILE
from protocol.messages import DesiredState, Event, EventKind, LifecycleState, ReportedModel, ReportedState
from protocol.telemetry import LATENCY_BUCKETS_MS, FeatureWindow, TelemetryMessage, TelemetrySummary, encode_message
from protocol.topics import Channel
from tests.agent.builders import make_manifest, onnx_linear
from tests.dashboard.conftest import screenshot
from tests.hub.e2e import Fleet
from tests.hub.support import tar_gz

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROFILE = "x86_gateway"
GROUPS = {"a-0": "alpha", "a-1": "alpha", "b-0": "beta", "solo": "solo"}
# (device, model) -> (inferences, latency bucket, counts of feature f0 over the baseline's two bins [5, 5])
TELEMETRY = {
    ("a-0", "encoder"): (120, 2, [60, 60]), ("a-1", "encoder"): (80, 4, [40, 40]),
    ("a-0", "classifier"): (120, 6, [0, 120]), ("a-1", "classifier"): (80, 7, [0, 80]),  # every value high: drift
    ("solo", "encoder"): (400, 12, [200, 200]),  # not a pipeline device
}  # fmt: skip
PIPELINE_DEVICES = {"a-0", "a-1"}
EMPTY_TOKEN = "empty-hub-admin-token-0123456789"


def spec(version: int, head_version: int) -> dict[str, Any]:
    """sorter: encoder -> classifier, then an argmax and a threshold on the scores."""
    return {
        "name": "sorter", "version": version, "description": "sorts parts by their vibration features",
        "inputs": [{"name": "features", "shape": [1, 4], "dtype": "float32"}],
        "stages": [{"name": "embed", "model": "encoder", "version": 1, "inputs": {"x": "inputs.features"}},
                   {"name": "head", "model": "classifier", "version": head_version, "inputs": {"x": "embed.y"}}],
        "steps": [{"name": "label", "op": "argmax", "inputs": {"x": "head.y"}},
                  {"name": "confident", "op": "threshold", "params": {"value": 0.8, "keep": True},
                   "inputs": {"x": "head.y"}}],
        "outputs": {"label": "label.out", "scores": "confident.out"},
    }  # fmt: skip


class PipelineSimDevice(SimDevice):
    """A simulated device that also installs the pipeline versions of its desired state and reports them."""

    def __init__(self, enrollment: EnrollResponse, profile: str, root: str) -> None:
        super().__init__(enrollment, profile, root)
        self.pipelines: dict[str, int] = {}

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.topic(Channel.DESIRED) and msg.payload:
            try:
                desired = DesiredState.from_json(bytes(msg.payload))
            except ValidationError:
                desired = None  # SimDevice counts it as rejected
            for p in desired.pipelines if desired and desired.generation > self.generation else []:
                if self.pipelines.get(p.name) != p.version:
                    for kind in (EventKind.DOWNLOADED, EventKind.VERIFIED, EventKind.ACTIVATED,
                                 EventKind.SELF_TEST_PASSED, EventKind.COMMITTED):  # fmt: skip
                        self.seq += 1
                        event = Event(device_id=self.id, seq=self.seq, kind=kind, ts=now(), pipeline=p.name,
                                      version=p.version, rollout_id=p.rollout_id)  # fmt: skip
                        client.publish(self.topic(Channel.EVENTS), event.to_bytes(), qos=1)
                    self.pipelines[p.name] = p.version
        super()._on_message(client, userdata, msg)  # models, generation, then _report

    def _report(self) -> None:
        def unit(name: str, version: int) -> ReportedModel:
            return ReportedModel(name=name, active_version=version, target_version=version, serving_since=now(),
                                 state=LifecycleState.COMMITTED, self_test_passed=True)  # fmt: skip

        state = ReportedState(device_id=self.id, profile=self.profile, applied_generation=self.generation,
                              models=[unit(n, v) for n, v in sorted(self.active.items())],
                              pipelines=[unit(n, v) for n, v in sorted(self.pipelines.items())],
                              agent_version="sim", reported_at=now())  # fmt: skip
        if self.client is not None:
            self.client.publish(self.topic(Channel.REPORTED), state.to_bytes(), qos=1, retain=True)


def _wait(predicate: Callable[[], Any], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {what}")


def _push_model(fleet: Fleet, workdir: Path, name: str, version: int, n_in: int, n_out: int) -> None:
    artifact = onnx_linear(workdir / f"{name}-{version}.onnx", n_in=n_in, n_out=n_out, seed=version)
    folder = workdir / f"out-{name}-{version}"
    (folder / PROFILE).mkdir(parents=True)
    (folder / PROFILE / artifact.name).write_bytes(artifact.read_bytes())
    manifest = make_manifest(artifact, name=name, version=version, profile=PROFILE)
    (folder / PROFILE / MANIFEST_FILE).write_bytes(manifest.to_bytes())
    r = fleet.api("POST", "/api/v1/models", files={"archive": ("o.tar.gz", tar_gz(folder))})
    assert r.status_code == 201, r.text


def _enroll(fleet: Fleet, device_id: str) -> None:
    token = fleet.api("POST", "/api/v1/enrollment-tokens", json={"group": GROUPS[device_id]}).json()["token"]
    r = httpx.post(f"{fleet.url}{ENROLL_PATH}", json={"enrollment_token": token, "profile": PROFILE,
                                                      "device_id": device_id}, timeout=30)  # fmt: skip
    assert r.status_code == 201, r.text
    device = PipelineSimDevice(EnrollResponse.model_validate(r.json()), PROFILE, fleet.root)
    fleet.devices[device_id] = device
    device.connect()


def _roll_out(fleet: Fleet, rollout_id: str, version: int, group: str) -> None:
    body = {"id": rollout_id, "pipeline": "sorter", "version": version, "target": {"group": group},
            "canary_percent": 0, "stages": [100], "probation_s": 0}  # fmt: skip
    r = fleet.api("POST", "/api/v1/rollouts", json=body)
    assert r.status_code == 201, r.text
    fleet.wait_rollout(rollout_id, "completed")


def _send_telemetry(fleet: Fleet) -> None:
    end = datetime.now(UTC)
    for seq, ((device_id, model), (n, bucket, counts)) in enumerate(TELEMETRY.items(), start=1):
        latency = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        latency[bucket] = n
        summary = TelemetrySummary(
            device_id=device_id, model=model, version=1, profile=PROFILE, window_start=end - timedelta(minutes=5),
            window_end=end, n=n, latency_buckets=latency, inputs=[FeatureWindow(name="f0", counts=counts)],
        )  # fmt: skip
        device = fleet.devices[device_id]
        assert device.client is not None
        message = encode_message(TelemetryMessage(id=seq, device_id=device_id, summary=summary))
        device.client.publish(device.topic(Channel.TELEMETRY), message, qos=1).wait_for_publish(10)
    rows = {"encoder": 3, "classifier": 2}
    _wait(lambda: all(fleet.api("GET", f"/api/v1/telemetry/{m}/1").json()["rows"] == n for m, n in rows.items()),
          "telemetry stored")  # fmt: skip


@pytest.fixture(scope="module")
def pipeline_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("pipeline-fleet")
    fleet = Fleet(workdir=workdir, root=f"edgefleet-pipe-{uuid.uuid4().hex[:8]}/v1",
                  db_url=f"sqlite:///{workdir / 'hub.db'}")  # fmt: skip
    fleet.start_broker()
    fleet.start_hub()
    try:
        _push_model(fleet, workdir, "encoder", 1, n_in=4, n_out=3)
        _push_model(fleet, workdir, "classifier", 1, n_in=3, n_out=2)
        _push_model(fleet, workdir, "classifier", 2, n_in=3, n_out=2)
        for version, head in ((1, 1), (2, 2)):
            r = fleet.api("POST", "/api/v1/pipelines", json={"spec": spec(version, head)})
            assert r.status_code == 201, r.text
        for device_id in GROUPS:
            _enroll(fleet, device_id)
        _roll_out(fleet, "r-sorter-1", 1, "alpha")
        _roll_out(fleet, "r-sorter-2", 2, "beta")
        _send_telemetry(fleet)
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture(scope="module")
def base_url(pipeline_fleet: Fleet) -> str:
    return pipeline_fleet.url


@pytest.fixture
def browser_context_args() -> dict[str, Any]:
    """Pages are opened by absolute URL on this module's hub (the session's context args name the shared fleet)."""
    return {}


def test_pipelines_list_matches_the_pipelines_and_devices_api(signed_in: Page, pipeline_fleet: Fleet) -> None:
    page = signed_in
    page.click("header nav >> text=Pipelines")
    page.wait_for_url(lambda url: url.endswith("/dashboard/pipelines"))
    versions = pipeline_fleet.api("GET", "/api/v1/pipelines").json()
    devices = pipeline_fleet.api("GET", "/api/v1/devices").json()
    assert [(v["name"], v["version"]) for v in versions] == [("sorter", 2), ("sorter", 1)]
    assert page.locator("[data-testid=pipelines-table] tbody tr").count() == len(versions)
    for v in versions:
        row = page.locator(f"tr[data-pipeline='sorter'][data-version='{v['version']}']")
        running = sum(1 for d in devices if d["current_pipelines"].get("sorter") == v["version"])
        assert row.get_by_test_id("running").inner_text() == str(running)
        assert row.get_by_test_id("profiles").inner_text() == ", ".join(v["profiles"]) == PROFILE
        chips = row.locator("[data-stage]")
        shown = {chips.nth(i).get_attribute("data-stage"): (chips.nth(i).get_attribute("data-model"),
                 int(chips.nth(i).get_attribute("data-model-version") or 0)) for i in range(chips.count())}  # fmt: skip
        assert shown == {s: (m["model"], m["version"]) for s, m in v["stages"].items()}
    assert [page.locator(f"tr[data-version='{v}'] [data-testid=running]").inner_text() for v in (1, 2)] == ["2", "1"]
    screenshot(page, "pipelines")


def test_pipeline_version_page_shows_run_order_steps_wiring_and_rollouts(
    signed_in: Page, pipeline_fleet: Fleet, base_url: str
) -> None:
    page = signed_in
    page.goto(f"{base_url}/dashboard/pipelines")
    page.locator("tr[data-version='1'] [data-testid=open]").click()
    page.wait_for_url(lambda url: url.endswith("/dashboard/pipelines/sorter/1"))
    nodes = page.locator("[data-testid=run-order] tbody tr")
    order = [(nodes.nth(i).get_attribute("data-node"), nodes.nth(i).get_attribute("data-kind"))
             for i in range(nodes.count())]  # fmt: skip
    assert order == [("embed", "stage"), ("head", "stage"), ("label", "step"), ("confident", "step")]
    for stage, model in (("embed", "encoder"), ("head", "classifier")):
        row = page.locator(f"[data-testid=run-order] tr[data-node='{stage}']")
        assert row.get_by_test_id("model").inner_text() == f"{model} v1"
        assert row.get_by_test_id("telemetry-link").get_attribute("href") == f"/dashboard/telemetry/{model}/1"
    confident = page.locator("[data-testid=run-order] tr[data-node='confident']")
    assert confident.get_by_test_id("op").inner_text() == "threshold"
    params = confident.locator("[data-param]")
    assert [params.nth(i).inner_text() for i in range(params.count())] == ["value = 0.8", "keep = yes", "fill = 0"]
    params = page.locator("[data-testid=run-order] tr[data-node='label'] [data-param]")
    assert [params.nth(i).inner_text() for i in range(params.count())] == ["axis = -1", "keepdims = no"]
    wires = page.locator("[data-testid=wiring] tbody tr")
    assert [(wires.nth(i).get_attribute("data-from"), wires.nth(i).get_attribute("data-to"))
            for i in range(wires.count())] == [
        ("input features", "embed.x"), ("embed.y", "head.x"), ("head.y", "label.x"), ("head.y", "confident.x"),
        ("label.out", "output label"), ("confident.out", "output scores")]  # fmt: skip
    rollout = pipeline_fleet.rollout("r-sorter-1")
    assert rollout["kind"] == "pipeline" and rollout["state"] == "completed"
    rows = page.locator("[data-testid=pipeline-rollouts] tbody tr")
    assert rows.count() == 1 and rows.first.get_attribute("data-rollout") == "r-sorter-1"
    assert rows.first.get_by_test_id("state").inner_text() == rollout["state"]
    waves = rows.first.locator("[data-wave]")
    assert [int(waves.nth(i).get_attribute("data-total") or -1) for i in range(waves.count())] == [
        w["total"] for w in rollout["waves"]] == [2]  # fmt: skip
    assert waves.first.inner_text() == "wave 0: 2 / 2"  # waves counted from 0, as the API counts them; no canary
    assert rows.first.get_by_test_id("wave").inner_text() == "wave 0"
    page.locator("[data-testid=pipeline-rollouts] a").first.click()
    page.wait_for_url(lambda url: url.endswith("/dashboard/rollouts/r-sorter-1"))


def test_latency_share_and_drift_per_stage_come_from_the_pipeline_devices(
    signed_in: Page, pipeline_fleet: Fleet, base_url: str
) -> None:
    page = signed_in
    page.goto(f"{base_url}/dashboard/pipelines/sorter/1")
    p50 = {}
    for stage, model in (("embed", "encoder"), ("head", "classifier")):
        buckets = [0] * (len(LATENCY_BUCKETS_MS) + 1)
        for (device_id, m), (n, bucket, _) in TELEMETRY.items():
            if m == model and device_id in PIPELINE_DEVICES:
                buckets[bucket] += n
        p50[stage] = quantile_ms(buckets, 0.5)
    total = sum(v for v in p50.values() if v is not None)
    for stage, model in (("embed", "encoder"), ("head", "classifier")):
        row = page.locator(f"[data-testid=stage-telemetry] tr[data-stage='{stage}']")
        api = pipeline_fleet.api("GET", f"/api/v1/telemetry/{model}/1", params={"group": "alpha"}).json()
        expected = p50[stage]
        assert expected is not None and api["latency_ms"]["p50"] == pytest.approx(expected)
        assert row.get_by_test_id("p50").inner_text() == f"{expected:.2f}"
        assert row.get_by_test_id("inferences").inner_text() == str(api["n"])
        assert float(row.get_by_test_id("share").get_attribute("data-share") or "nan") == pytest.approx(
            expected / total, abs=1e-4)  # fmt: skip
        assert row.get_by_test_id("drift-score").inner_text() == f"{api['drift']['score']:.3f}"
        assert row.get_attribute("data-drifted") == ("yes" if api["drift"]["dataset_drift"] else "no")
    head = page.locator("[data-testid=stage-telemetry] tr[data-stage='head']")
    assert head.get_attribute("data-drifted") == "yes" and head.get_by_test_id("drifted-features").inner_text() == "f0"
    assert page.locator("[data-testid=stage-telemetry] tr[data-stage='embed']").get_attribute("data-drifted") == "no"
    # solo's slow windows of encoder v1 count for the model, not for the pipeline
    fleet_p50 = pipeline_fleet.api("GET", "/api/v1/telemetry/encoder/1").json()["latency_ms"]["p50"]
    assert fleet_p50 > 10 * (p50["embed"] or 0)
    assert page.get_by_test_id("no-telemetry").count() == 0
    screenshot(page, "pipeline-sorter-v1")
    page.select_option("select[name=period]", "1h")
    page.click("form.cohort button")
    page.wait_for_url(lambda url: url.endswith("/dashboard/pipelines/sorter/1?period=1h"))
    shown = page.locator("[data-testid=stage-telemetry] tr[data-stage='embed'] [data-testid=p50]").inner_text()
    assert shown == f"{p50['embed']:.2f}"  # every window is minutes old


def test_a_fresh_version_says_no_telemetry_and_an_unknown_one_is_404(
    signed_in: Page, pipeline_fleet: Fleet, base_url: str
) -> None:
    page = signed_in
    page.goto(f"{base_url}/dashboard/pipelines/sorter/2")
    assert page.get_by_test_id("running").inner_text() == "1"  # b-0, which uploaded nothing
    assert page.get_by_test_id("no-telemetry").inner_text() == "No telemetry from devices yet."
    assert page.locator("[data-testid=stage-telemetry]").count() == 0
    head = page.locator("[data-testid=run-order] tr[data-node='head']")
    assert head.get_by_test_id("model").inner_text() == "classifier v2"
    assert page.locator("[data-testid=pipeline-rollouts] tr[data-rollout='r-sorter-2']").count() == 1
    screenshot(page, "pipeline-sorter-v2")
    missing = page.goto(f"{base_url}/dashboard/pipelines/sorter/9")
    assert missing is not None and missing.status == 404
    assert page.get_by_test_id("error").inner_text() == "no pipeline sorter version 9"


def test_latency_shares_and_readable_params() -> None:
    assert pipelines_page.latency_shares({"a": 1.0, "b": 3.0, "c": None}) == {"a": 0.25, "b": 0.75}
    assert pipelines_page.latency_shares({"a": None}) == {}
    assert [pipelines_page.readable(v) for v in (True, None, 0.5, (28, 28), "yxyx")] == [
        "yes", "none", "0.5", "(28, 28)", "yxyx"]  # fmt: skip


def test_an_empty_hub_lists_no_pipelines(tmp_path: Path) -> None:
    settings = HubSettings(data_dir=tmp_path / "hub", admin_token=EMPTY_TOKEN, mqtt_enabled=False)
    with TestClient(create_app(settings, background=False), base_url="http://127.0.0.1") as client:
        assert client.post("/dashboard/login", data={"token": EMPTY_TOKEN}, follow_redirects=False).status_code == 303
        listing = client.get("/dashboard/pipelines")
        assert listing.status_code == 200 and "No pipelines yet" in listing.text
        missing = client.get("/dashboard/pipelines/sorter/1")
        assert missing.status_code == 404 and "no pipeline sorter version 1" in missing.text
