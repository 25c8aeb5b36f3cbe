"""The telemetry API the dashboard draws from, in process on SQLite and PostgreSQL: every source counted (also where an
hourly rollup left windows out), the trend per bucket from the rollups or the raw windows, rollout events, bad input."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from hub.api.main import create_app
from hub.mqtt.ingest import IngestBatch, store_batch
from hub.services import Hub
from hub.settings import HubSettings
from hub.telemetry.rollup import roll_up
from protocol.http import ENROLL_PATH
from protocol.telemetry import TelemetryMessage, TelemetrySummary
from tests.dashboard import meter
from tests.hub.conftest import pg_schema_url
from tests.hub.support import tar_gz

TOKEN = "trend-api-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
URL = "/api/v1/telemetry/meter/1"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    urls = iter([f"sqlite:///{tmp_path / 'hub.db'}"]) if request.param == "sqlite" else pg_schema_url()
    url = next(urls)
    settings = HubSettings(data_dir=tmp_path / "data", database_url=url, admin_token=TOKEN, mqtt_enabled=False)
    try:
        with TestClient(create_app(settings, background=False)) as c:
            out = meter.folder(tmp_path / "out", 1, meter.PROFILES)
            assert c.post("/api/v1/models", files={"archive": ("o.tar.gz", tar_gz(out))}, headers=ADMIN).is_success
            for device_id, profile, group in (("pi-1", "raspberry_pi_4", "lab"), ("gw-1", "x86_gateway", "edge")):
                tok = c.post("/api/v1/enrollment-tokens", json={"group": group}, headers=ADMIN).json()["token"]
                r = c.post(ENROLL_PATH, json={"enrollment_token": tok, "profile": profile, "device_id": device_id})
                assert r.status_code == 201, r.text
            yield c
    finally:
        next(urls, None)  # PostgreSQL: drop the schema


def _store(hub: Hub, summaries: list[TelemetrySummary], first_id: int) -> None:
    batch = IngestBatch(telemetry=[TelemetryMessage(id=first_id + i, device_id=s.device_id, summary=s)
                                   for i, s in enumerate(summaries)])  # fmt: skip
    store_batch(engine=hub.engine, batch=batch, now=datetime.now(UTC))
    with hub.engine.begin() as conn:
        roll_up(conn)


def _get(client: TestClient, path: str, **params: Any) -> dict[str, Any]:
    r = client.get(path, params=params, headers=ADMIN)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_every_source_counts_in_the_stats_and_the_trend(client: TestClient) -> None:
    hub: Hub = client.app.state.hub  # type: ignore[attr-defined]
    cloud = meter.no_model("pi-1", "raspberry_pi_4", T0 + timedelta(minutes=1), 30, 3)
    _store(hub, [cloud], 1)  # rolled up first: its hour's rollup starts without bins ...
    served = [meter.window("pi-1", "raspberry_pi_4", T0 + timedelta(minutes=m), 100, errors=2, low_confidence=4)
              for m in (10, 70)]  # fmt: skip
    edge = meter.window("gw-1", "x86_gateway", T0 + timedelta(minutes=75), 40, classes=[0, 0, 40])
    _store(hub, [*served, edge], 10)  # ... and keeps the device window of 08:00 beside it (issue 22)
    stats = _get(client, URL)
    assert stats["n"] == 30 + 200 + 40 and stats["skipped"] == 0 and stats["hours_from_windows"] == 0
    assert stats["sources"] == {"requests": 270, "device": 270 - 7 - 35, "cloud": 27 + 8, "failed": 3 + 4,
                                "no_model": 30, "no_model_windows": 1}  # fmt: skip
    assert stats["latency_ms"] is not None and len(stats["drift"]["features"]) == 3
    assert stats["summary"]["fallback"] == {"low_confidence": 8, "no_model": 30}

    hourly = _get(client, f"{URL}/trend", since=(T0 - timedelta(hours=12)).isoformat(),
                  until=(T0 + timedelta(hours=4)).isoformat())  # fmt: skip
    assert (hourly["source"], hourly["step_s"], hourly["windows"]) == ("hourly", 3600, 4)
    assert [(p["start"], p["requests"], p["device"], p["cloud"], p["failed"]) for p in hourly["points"]] == [
        ("2026-11-25T08:00:00Z", 130, 130 - 5 - 31, 27 + 4, 5),
        ("2026-11-25T09:00:00Z", 140, 140 - 2 - 4, 4, 2),
    ]
    assert hourly["points"][0]["drift_score"] is not None and hourly["points"][0]["p95_ms"] is not None

    raw = _get(client, f"{URL}/trend", since=T0.isoformat(), until=(T0 + timedelta(hours=2)).isoformat())
    assert (raw["source"], raw["step_s"]) == ("windows", 120)
    assert [(p["start"][11:16], p["requests"]) for p in raw["points"]] == [
        ("08:00", 30), ("08:10", 100), ("09:10", 100), ("09:14", 40)]  # fmt: skip
    cloud_only = raw["points"][0]
    assert cloud_only["p95_ms"] is None and cloud_only["drift_score"] is None and cloud_only["accuracy"] is None
    two_hours = {"since": T0.isoformat(), "until": (T0 + timedelta(hours=2)).isoformat()}
    edge_trend = _get(client, f"{URL}/trend", group="edge", **two_hours)
    assert [p["requests"] for p in edge_trend["points"]] == [40] and edge_trend["points"][0]["dataset_drift"] is True


def test_rollout_events_and_bad_requests(client: TestClient) -> None:
    r = client.post("/api/v1/rollouts", json={"id": "r-m", "model": "meter", "version": 1, "canary_percent": 0,
                                              "stages": [100], "probation_s": 0}, headers=ADMIN)  # fmt: skip
    assert r.status_code == 201, r.text
    trend = _get(client, f"{URL}/trend", rollout="r-m")  # the last 24 hours, the rollout's devices
    audit = [e for e in client.get("/api/v1/audit", headers=ADMIN).json() if e["target"] == "r-m"]
    assert [(e["ts"], e["action"]) for e in trend["events"]] == [(e["ts"], e["action"]) for e in reversed(audit)]
    assert [e["label"] for e in trend["events"]][:2] == ["created", "started"]
    assert trend["rollout"] == "r-m" and trend["points"] == []
    since, until = T0.isoformat(), (T0 + timedelta(hours=16)).isoformat()
    cases: tuple[tuple[dict[str, str | int], int], ...] = (
        ({"rollout": "nope"}, 404), ({"since": until, "until": since}, 422),
        ({"since": since, "until": until, "step_s": 10}, 422), ({"step_s": 5}, 422), ({"tag": "no-equals"}, 422),
    )  # fmt: skip
    for params, status in cases:
        assert client.get(f"{URL}/trend", params=params, headers=ADMIN).status_code == status, params
    assert client.get("/api/v1/telemetry/meter/9/trend", headers=ADMIN).status_code == 404
    assert client.get(f"{URL}/trend").status_code == 401
