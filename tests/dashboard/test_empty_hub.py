"""A brand-new hub (no devices, models, rollouts or telemetry): every page renders its empty state."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hub.api.main import create_app
from hub.dashboard.auth import COOKIE
from hub.settings import HubSettings

TOKEN = "empty-hub-admin-token-0123456789"


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    settings = HubSettings(data_dir=tmp_path / "hub", admin_token=TOKEN, mqtt_enabled=False)
    return TestClient(create_app(settings, background=False), base_url="http://127.0.0.1")


def test_every_page_renders_on_an_empty_hub(client: TestClient) -> None:
    with client:
        login = client.post("/dashboard/login", data={"token": TOKEN}, follow_redirects=False)
        assert login.status_code == 303 and COOKIE in login.cookies
        fleet = client.get("/dashboard")
        assert fleet.status_code == 200 and "No devices enrolled yet" in fleet.text
        assert 'data-testid="devices-total">0<' in fleet.text and "disconnected" in fleet.text  # no broker
        assert "No rollouts yet" in client.get("/dashboard/rollouts").text
        assert "The registry is empty" in client.get("/dashboard/models").text
        audit = client.get("/dashboard/audit")
        assert audit.status_code == 200 and "dashboard.login" in audit.text
        missing = client.get("/dashboard/rollouts/nope")
        assert missing.status_code == 404 and "no rollout" in missing.text
        assert client.get("/dashboard/telemetry/digits/1").status_code == 404  # not in the registry
        assert client.get("/dashboard/static/dashboard.css").status_code == 200
        assert client.get("/dashboard/static/auth.py").status_code == 404  # only the listed files
        out = client.post("/dashboard/logout", follow_redirects=False)
        assert out.status_code == 303 and client.get("/dashboard", follow_redirects=False).status_code == 303
