"""/metrics behind `metrics_token`: Prometheus scrapes with its own bearer token; open when none is set."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from hub.api.main import create_app
from hub.settings import HubSettings

ADMIN_TOKEN = "metrics-test-admin-token"
METRICS_TOKEN = "prometheus-scrape-token"


def hub_client(tmp_path: Path, metrics_token: str | None) -> TestClient:
    settings = HubSettings(data_dir=tmp_path / "data", admin_token=ADMIN_TOKEN, mqtt_enabled=False,
                           metrics_token=metrics_token)  # fmt: skip
    return TestClient(create_app(settings, background=False))


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[TestClient]:
    with hub_client(tmp_path, METRICS_TOKEN) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def families(text: str) -> dict[str, float]:
    """Sample name -> value of the unlabelled samples (enough to see the format parses)."""
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}


def test_with_a_token_only_its_bearer_and_the_admin_read_metrics(guarded: TestClient) -> None:
    refused = [
        guarded.get("/metrics"),
        guarded.get("/metrics", headers=bearer("wrong")),
        guarded.get("/metrics", headers=bearer(METRICS_TOKEN + "x")),
        guarded.get("/metrics", headers={"Authorization": f"Basic {METRICS_TOKEN}"}),
    ]
    for r in refused:
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", r.text
        assert r.json()["detail"] == "metrics bearer token required"
        assert "edgefleet_hub" not in r.text
    scraped = guarded.get("/metrics", headers=bearer(METRICS_TOKEN))
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain; version=")
    assert families(scraped.text)["edgefleet_hub_metrics_auth_failures_total"] == 4
    assert "edgefleet_hub_http_requests_total" in scraped.text
    assert guarded.get("/metrics", headers=bearer(ADMIN_TOKEN)).status_code == 200
    assert guarded.get("/healthz").status_code == 200  # liveness stays open for load balancers


@pytest.mark.parametrize("token", [None, ""])
def test_without_a_token_metrics_stay_open(tmp_path: Path, token: str | None) -> None:
    with hub_client(tmp_path, token) as c:
        r = c.get("/metrics")
        assert r.status_code == 200 and families(r.text)["edgefleet_hub_metrics_auth_failures_total"] == 0
        assert c.get("/metrics", headers=bearer("anything")).status_code == 200
