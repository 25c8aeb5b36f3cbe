"""Rollouts end to end: hub under uvicorn, private Mosquitto with generated auth, simulated paho devices."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hub.e2e import Fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def fleet(tmp_path: Path, unique_root: str) -> Iterator[Fleet]:
    f = Fleet(workdir=tmp_path, root=unique_root, db_url=f"sqlite:///{tmp_path / 'hub.db'}")
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
