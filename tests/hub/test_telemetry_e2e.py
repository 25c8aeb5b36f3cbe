"""Telemetry end to end: hub under uvicorn, private Mosquitto with generated auth, simulated paho devices that
publish `TelemetryMessage`s (zlib) like the agent's outbox does; health gates pause or roll back canaries."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from protocol.telemetry import TelemetryMessage, TelemetrySummary, encode_message, merge
from protocol.topics import Channel
from tests.hub.e2e import Fleet
from tests.hub.simdevice import SimDevice
from tests.hub.support import tar_gz
from tests.hub.test_telemetry_data import baseline, sample, summarize, write_version

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PI = "raspberry_pi_4"


@pytest.fixture
def fleet(tmp_path: Path, unique_root: str) -> Iterator[Fleet]:
    f = Fleet(workdir=tmp_path, root=unique_root, db_url=f"sqlite:///{tmp_path / 'hub.db'}")
    f.start_broker(telemetry_eval_s=0.3, telemetry_alert_min_n=300)
    f.start_hub()
    yield f
    f.stop()


def _push(fleet: Fleet, name: str, version: int, profiles: list[str]) -> None:
    folder = write_version(fleet.workdir / f"out-{name}-{version}", name, version, profiles)
    r = fleet.api("POST", "/api/v1/models", files={"archive": ("o.tar.gz", tar_gz(folder))})
    assert r.status_code == 201, r.text


def _send(device: SimDevice, msg_id: int, summary: TelemetrySummary) -> None:
    assert device.client is not None
    msg = TelemetryMessage(id=msg_id, device_id=device.id, summary=summary)
    device.client.publish(device.topic(Channel.TELEMETRY), encode_message(msg), qos=1).wait_for_publish(10)


def _until(check: Callable[[], Any], timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"not reached within {timeout}s")


def test_device_summaries_are_ingested_merged_and_not_double_counted(fleet: Fleet) -> None:
    _push(fleet, "digits", 1, [PI, "x86_gateway"])
    devices = [fleet.enroll("pi-0", group="lab"), fleet.enroll("pi-1", group="lab"),
               fleet.enroll("gw-0", profile="x86_gateway", group="edge")]  # fmt: skip
    rng, base, now = np.random.default_rng(2), baseline(), datetime.now(UTC)
    sent: list[TelemetrySummary] = []
    for d in devices:
        _until(lambda d=d: d.client is not None and d.client.is_connected())
        for i in range(3):
            x = sample(rng, 200, "mean" if d.profile == "x86_gateway" else None)
            s = summarize(d.id, d.profile, "digits", 1, x, rng.uniform(1, 8, len(x)), base=base, errors=i,
                          fallback={"no_model": 1}, start=now - timedelta(minutes=10 - i))  # fmt: skip
            sent.append(s)
            _send(d, i + 1, s)
        _send(d, 2, sent[-2])  # the outbox resends an unacknowledged row: stored once
    pooled = merge(sent)
    stats = _until(lambda: (r := fleet.api("GET", "/api/v1/telemetry/digits/1").json())["n"] == pooled.n and r)
    merged = TelemetrySummary.model_validate(stats["summary"])
    assert stats["rows"] == 9 and stats["devices"] == 3 and merged.inputs == pooled.inputs
    assert merged.latency_buckets == pooled.latency_buckets and stats["errors"] == 9
    assert stats["fallback"] == {"no_model": 9} and stats["drift"]["dataset_drift"] is True  # the gateway drifts
    lab = fleet.api("GET", "/api/v1/telemetry/digits/1", params={"group": "lab"}).json()
    assert lab["devices"] == 2 and lab["drift"]["dataset_drift"] is False
    def open_alerts() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = fleet.api("GET", "/api/v1/telemetry/alerts", params={"state": "open"}).json()
        return found

    alerts = _until(lambda: "profile:x86_gateway" in {a["cohort"] for a in open_alerts()} and open_alerts())
    assert "profile:raspberry_pi_4" not in {a["cohort"] for a in alerts}
    # The gauges come from the monitor's passes (every 0.3 s here): the one that opened the alert may have read
    # the summaries before the last of them was stored, so wait for a pass that saw all 1,800 inferences.
    total = 'edgefleet_hub_telemetry_inferences{model="digits",profile="*",version="1"} 1800.0'
    text = _until(lambda: total in (t := fleet.api("GET", "/metrics").text) and t)
    assert 'edgefleet_hub_telemetry_error_rate{model="digits",profile="*",version="1"}' in text
    time.sleep(1)  # several monitor passes later: still one alert per cohort, nothing counted twice
    again = fleet.api("GET", "/api/v1/telemetry/alerts").json()
    assert sorted(a["cohort"] for a in again) == sorted(a["cohort"] for a in alerts)
    assert fleet.api("GET", "/api/v1/telemetry/digits/1").json()["n"] == pooled.n


class Publisher:
    """Every device publishes one window per active model every `interval` s; `behaviour` shapes the data."""

    def __init__(self, devices: list[SimDevice], behaviour: Callable[[str, int], str]) -> None:
        self.devices, self.behaviour = devices, behaviour
        self.ids = itertools.count(1)
        self.stop = threading.Event()
        self.rng, self.base = np.random.default_rng(4), baseline()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            for d in self.devices:
                for model, version in list(d.active.items()):
                    kind = self.behaviour(model, version)
                    x = sample(self.rng, 60, "mean" if kind == "drift" else None)
                    lat = self.rng.uniform(20, 40, 60) if kind == "slow" else self.rng.uniform(1.2, 2.8, 60)
                    now = datetime.now(UTC)
                    s = summarize(d.id, d.profile, model, version, x, lat, base=self.base,
                                  start=now - timedelta(seconds=0.2))  # fmt: skip
                    if d.client is not None:
                        _send(d, next(self.ids), s.model_copy(update={"window_end": now}))


def test_telemetry_gates_pause_or_roll_back_a_bad_canary_and_pass_a_healthy_one(fleet: Fleet) -> None:
    models = {"drifty": "drift", "slowpoke": "slow", "steady": "ok"}
    for name in models:
        _push(fleet, name, 1, [PI])
        _push(fleet, name, 2, [PI])
    devices = [fleet.enroll(f"d{i}") for i in range(4)]
    publisher = Publisher(devices, lambda model, version: models[model] if version == 2 else "ok")
    publisher.thread.start()
    try:
        base = {"canary_percent": 0, "stages": [100], "probation_s": 0}
        for name in models:
            r = fleet.api("POST", "/api/v1/rollouts", json={**base, "id": f"{name}-1", "model": name, "version": 1})
            assert r.status_code == 201, r.text
        for name in models:
            fleet.wait_rollout(f"{name}-1", "completed")
            _until(lambda name=name: fleet.api("GET", f"/api/v1/telemetry/{name}/1").json()["n"] >= 600)
        gated = {"canary_percent": 50, "stages": [100], "probation_s": 0, "error_threshold": 0,
                 "gates": ["self_test", "latency", "error_rate", "fallback_rate", "drift"],
                 "gate_limits": {"min_inferences": 100}}  # fmt: skip
        for name in models:
            spec = {**gated, "id": f"{name}-2", "model": name, "version": 2, "auto_rollback": name == "slowpoke"}
            r = fleet.api("POST", "/api/v1/rollouts", json=spec)
            assert r.status_code == 201, r.text
        paused = fleet.wait_rollout("drifty-2", "paused")
        assert "drift:" in paused["reason"] and "features drifted" in paused["reason"], paused["reason"]
        failed = [d for d in paused["devices"] if d["state"] == "failed"]
        assert failed and all("does not drift" in d["reason"] for d in failed)
        assert all(d["state"] == "pending" for d in paused["devices"] if d["wave"] == 1)  # wave 1 never released
        rolled = fleet.wait_rollout("slowpoke-2", "rolled_back")
        assert "latency: p95" in rolled["reason"] and "> 1.5 x" in rolled["reason"], rolled["reason"]
        assert {d["state"] for d in rolled["devices"] if d["wave"] == 0} == {"rolled_back"}
        done = fleet.wait_rollout("steady-2", "completed", timeout=40)
        assert all(d["state"] == "healthy" for d in done["devices"])
        _until(lambda: all(d.active.get("slowpoke") == 1 and d.active.get("steady") == 2 for d in devices))
    finally:
        publisher.stop.set()
        publisher.thread.join(5)
