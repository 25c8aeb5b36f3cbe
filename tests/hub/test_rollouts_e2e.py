"""Rollouts end to end: hub under uvicorn, private Mosquitto with generated auth, simulated paho devices."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hub.conftest import pg_schema_url
from tests.hub.e2e import Fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def fleet_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLite by default; `@pytest.mark.parametrize("fleet_db", ["postgresql"], indirect=True)` for PostgreSQL."""
    if getattr(request, "param", "sqlite") == "postgresql":
        yield from pg_schema_url()
    else:
        yield f"sqlite:///{tmp_path / 'hub.db'}"


@pytest.fixture
def fleet(tmp_path: Path, unique_root: str, fleet_db: str) -> Iterator[Fleet]:
    f = Fleet(workdir=tmp_path, root=unique_root, db_url=fleet_db)
    f.start_broker()
    f.start_hub()
    yield f
    f.stop()


def test_waves_advance_to_completion_and_late_device_converges(fleet: Fleet) -> None:
    fleet.push("digits", 1, ["raspberry_pi_4", "x86_gateway"])
    for i in range(5):
        fleet.enroll(f"pi-{i}", group="lab")
    fleet.enroll("gw-0", profile="x86_gateway", group="other")
    r = fleet.api("POST", "/api/v1/rollouts", json={
        "id": "r1", "model": "digits", "version": 1, "target": {"group": "lab"}, "canary_percent": 20,
        "stages": [60, 100], "probation_s": 0.3})  # fmt: skip
    assert r.status_code == 201, r.text
    assert [w["total"] for w in r.json()["waves"]] == [1, 2, 2]
    done = fleet.wait_rollout("r1", "completed")
    assert all(d["state"] == "healthy" for d in done["devices"])
    assert all(fleet.devices[f"pi-{i}"].active == {"digits": 1} for i in range(5))
    assert fleet.devices["gw-0"].active == {}
    late = fleet.enroll("pi-late", group="lab")
    with late.changed:
        assert late.changed.wait_for(lambda: late.active == {"digits": 1}, timeout=15)
    listed = {d["id"]: d for d in fleet.api("GET", "/api/v1/devices").json()}
    assert listed["pi-0"]["desired_versions"] == {"digits": 1} and listed["pi-0"]["online"] is True
    assert listed["pi-0"]["current_versions"] == {"digits": 1} and listed["gw-0"]["desired_versions"] == {}
    fleet.devices["pi-1"].crash()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and fleet.api("GET", "/api/v1/devices/pi-1").json()["online"]:
        time.sleep(0.05)
    assert fleet.api("GET", "/api/v1/devices/pi-1").json()["online"] is False


def _versions(fleet: Fleet) -> dict[str, dict[str, int]]:
    return {i: dict(d.active) for i, d in fleet.devices.items()}


def test_failing_canary_pauses_then_rollback_of_group_and_device(fleet: Fleet) -> None:
    fleet.push("digits", 1, ["raspberry_pi_4"])
    fleet.push("digits", 2, ["raspberry_pi_4"])
    for i in range(4):
        fleet.enroll(f"d{i}", group="east" if i < 2 else "west", failing={2} if i == 0 else None)
    base = {"model": "digits", "canary_percent": 0, "stages": [100], "probation_s": 0}
    assert fleet.api("POST", "/api/v1/rollouts", json={**base, "id": "v1", "version": 1}).status_code == 201
    fleet.wait_rollout("v1", "completed")
    r = fleet.api("POST", "/api/v1/rollouts", json={**base, "id": "v2", "version": 2, "error_threshold": 0.2})
    assert r.status_code == 201
    paused = fleet.wait_rollout("v2", "paused")
    assert "1/4 failed" in paused["reason"]
    bad = next(d for d in paused["devices"] if d["device_id"] == "d0")
    assert bad["state"] == "failed" and "self-test" in bad["reason"]
    r = fleet.api("POST", "/api/v1/rollouts/v2/rollback", json={"group": "west"})
    assert r.status_code == 200, r.text
    west = {d["device_id"]: d["state"] for d in r.json()["devices"] if d["device_id"] in ("d2", "d3")}
    assert west == {"d2": "rolled_back", "d3": "rolled_back"}
    r = fleet.api("POST", "/api/v1/rollouts/v2/rollback", json={"device_id": "d1"})
    assert r.status_code == 200 and r.json()["state"] == "paused"
    d3 = fleet.devices["d3"]
    with d3.changed:
        assert d3.changed.wait_for(lambda: d3.active == {"digits": 1}, timeout=15)
    assert d3.desired_seen[-1].models[0].rollback is True
    resumed = fleet.api("POST", "/api/v1/rollouts/v2/resume").json()
    assert resumed["state"] in ("running", "completed") and resumed["spec"]["acknowledged_failures"] == ["d0"]
    fleet.wait_rollout("v2", "completed")  # the acknowledged failure no longer blocks the wave
    assert fleet.api("POST", "/api/v1/rollouts/v2/abort").status_code == 409
    assert fleet.api("POST", "/api/v1/rollouts/v2/rollback").json()["state"] == "rolled_back"
    again = fleet.api("POST", "/api/v1/rollouts/v2/resume")
    assert again.status_code == 409 and "rolled_back" in again.json()["detail"]
    actions = [e["action"] for e in fleet.api("GET", "/api/v1/audit").json()]
    assert {"rollout.rollback", "rollout.resume", "rollout.create"} <= set(actions)


def test_auto_rollback_returns_the_wave_to_the_previous_version(fleet: Fleet) -> None:
    fleet.push("digits", 1, ["raspberry_pi_4"])
    fleet.push("digits", 2, ["raspberry_pi_4"])
    for i in range(3):
        fleet.enroll(f"a{i}", failing={2} if i == 1 else None)
    base = {"model": "digits", "canary_percent": 0, "stages": [100], "probation_s": 0}
    fleet.api("POST", "/api/v1/rollouts", json={**base, "id": "one", "version": 1})
    fleet.wait_rollout("one", "completed")
    fleet.api("POST", "/api/v1/rollouts", json={**base, "id": "two", "version": 2, "auto_rollback": True})
    done = fleet.wait_rollout("two", "rolled_back")
    assert {d["state"] for d in done["devices"]} == {"rolled_back"}
    for d in fleet.devices.values():
        with d.changed:
            assert d.changed.wait_for(lambda d=d: d.active == {"digits": 1}, timeout=15), d.id


@pytest.mark.parametrize("fleet_db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
                         indirect=True)  # fmt: skip
def test_hub_killed_mid_rollout_resumes(fleet: Fleet) -> None:
    fleet.push("digits", 1, ["raspberry_pi_4"])
    for i in range(4):
        fleet.enroll(f"k{i}")
    r = fleet.api("POST", "/api/v1/rollouts", json={
        "id": "rk", "model": "digits", "version": 1, "canary_percent": 25, "stages": [100],
        "probation_s": 3})  # fmt: skip
    assert r.status_code == 201
    canary = next(d["device_id"] for d in r.json()["devices"] if d["wave"] == 0)
    dev = fleet.devices[canary]
    with dev.changed:
        assert dev.changed.wait_for(lambda: dev.active == {"digits": 1}, timeout=15)
    fleet.kill_hub()  # canary is in probation; waves 1 not released
    fleet.start_hub()
    done = fleet.wait_rollout("rk", "completed", timeout=40)
    assert all(d["state"] == "healthy" for d in done["devices"])
    assert all(d.active == {"digits": 1} for d in fleet.devices.values())


def test_broker_killed_mid_rollout_devices_converge(fleet: Fleet) -> None:
    fleet.push("digits", 1, ["raspberry_pi_4"])
    for i in range(3):
        fleet.enroll(f"b{i}")
    offline = fleet.enroll("b-offline", connect=False)
    assert fleet.broker is not None
    r = fleet.api("POST", "/api/v1/rollouts", json={
        "id": "rb", "model": "digits", "version": 1, "canary_percent": 0, "stages": [100], "probation_s": 0,
        "success_threshold": 0.7, "timeout_s": 120})  # fmt: skip
    assert r.status_code == 201
    fleet.broker.stop(kill=True)
    fleet.broker.start()
    offline.connect()
    done = fleet.wait_rollout("rb", "completed", timeout=40)
    assert sum(d["state"] == "healthy" for d in done["devices"]) >= 3
    for d in fleet.devices.values():
        with d.changed:
            assert d.changed.wait_for(lambda d=d: d.active == {"digits": 1}, timeout=20), d.id


def test_decommissioned_device_loses_token_and_broker_account(fleet: Fleet) -> None:
    dev = fleet.enroll("gone-1")
    keep = fleet.enroll("stays-1")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (dev.client and dev.client.is_connected()):
        time.sleep(0.05)
    assert fleet.api("DELETE", "/api/v1/devices/gone-1").status_code == 204
    assert fleet.api("DELETE", "/api/v1/devices/gone-1").status_code == 404
    assert fleet.api("GET", "/api/v1/devices/gone-1").status_code == 404
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and dev.client is not None and dev.client.is_connected():
        time.sleep(0.05)
    assert dev.client is not None and not dev.client.is_connected()
    assert keep.client is not None and keep.client.is_connected()
    assert "device.decommission" in [e["action"] for e in fleet.api("GET", "/api/v1/audit").json()]


@pytest.mark.parametrize("fleet_db", ["sqlite", "postgresql"], indirect=True)
def test_concurrent_enrollments_keep_every_broker_account(fleet: Fleet) -> None:
    """Enrollments racing each other (PostgreSQL runs them truly in parallel): every account stays."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    from protocol.http import ENROLL_PATH

    # One token each: enrollments sharing a token serialise on its row; separate ones really interleave.
    tokens = [fleet.api("POST", "/api/v1/enrollment-tokens", json={}).json()["token"] for _ in range(24)]

    def enroll(i: int) -> int:
        r = httpx.post(f"{fleet.url}{ENROLL_PATH}", json={"enrollment_token": tokens[i], "profile": "raspberry_pi_4",
                                                         "device_id": f"race-{i:02d}"}, timeout=60)  # fmt: skip
        return r.status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(enroll, range(24))) == {201}
    users = {line.split(":", 1)[0] for line in fleet.auth.password_file.read_text().splitlines() if line}
    assert {f"race-{i:02d}" for i in range(24)} <= users
