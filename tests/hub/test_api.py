"""The hub API in-process (TestClient) on SQLite and PostgreSQL: registry, enrollment, TUF serving, auth."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from hub.api.main import create_app
from hub.settings import HubSettings
from protocol.http import ENROLL_PATH, EnrollResponse, artifact_target
from tests.hub.support import tar_gz, write_folder

ADMIN = {"Authorization": "Bearer admin-secret-token"}


@pytest.fixture
def client(tmp_path: Path, db_url: str) -> Iterator[TestClient]:
    settings = HubSettings(
        data_dir=tmp_path / "data", database_url=db_url, admin_token="admin-secret-token", mqtt_enabled=False
    )
    with TestClient(create_app(settings, background=False)) as c:
        yield c


def enroll(client: TestClient, device_id: str, profile: str = "raspberry_pi_4", **token_args: object) -> EnrollResponse:
    tok = client.post("/api/v1/enrollment-tokens", json={"uses": 1, **token_args}, headers=ADMIN)
    assert tok.status_code == 201, tok.text
    r = client.post(
        ENROLL_PATH, json={"enrollment_token": tok.json()["token"], "profile": profile, "device_id": device_id}
    )
    assert r.status_code == 201, r.text
    return EnrollResponse.model_validate(r.json())


def test_enrollment_hands_devices_the_public_broker(tmp_path: Path, db_url: str) -> None:
    """Devices get the broker's public address: by default the hub's own, else mqtt_public_* (TLS on 8883)."""
    base = {"data_dir": tmp_path / "data", "database_url": db_url, "admin_token": "admin-secret-token",
            "mqtt_enabled": False}  # fmt: skip
    with TestClient(create_app(HubSettings(**base), background=False)) as c:
        mqtt = enroll(c, "plain-1").mqtt
    assert (mqtt.host, mqtt.port, mqtt.tls) == ("127.0.0.1", 1883, False)
    public = {"mqtt_public_host": "mqtt.example.org", "mqtt_public_port": 8883, "mqtt_public_tls": True}
    with TestClient(create_app(HubSettings(**base, **public), background=False)) as c:
        mqtt = enroll(c, "tls-1").mqtt
    assert (mqtt.host, mqtt.port, mqtt.tls, mqtt.username) == ("mqtt.example.org", 8883, True, "tls-1")


def test_push_is_immutable_and_served_with_range(client: TestClient, tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "out", "digits", 1, ["raspberry_pi_4", "x86_gateway"])
    r = client.post("/api/v1/models", files={"archive": ("out.tar.gz", tar_gz(folder))}, headers=ADMIN)
    assert r.status_code == 201, r.text
    assert {v["profile"] for v in r.json()["stored"]} == {"raspberry_pi_4", "x86_gateway"}
    again = client.post("/api/v1/models", files={"archive": ("out.tar.gz", tar_gz(folder))}, headers=ADMIN)
    assert again.status_code == 200 and len(again.json()["unchanged"]) == 2
    changed = write_folder(tmp_path / "out2", "digits", 1, ["raspberry_pi_4"], payload=b"other")
    conflict = client.post("/api/v1/models", files={"archive": ("o.tar.gz", tar_gz(changed))}, headers=ADMIN)
    assert conflict.status_code == 409 and "immutable" in conflict.json()["detail"]
    refused = client.get("/api/v1/audit", headers=ADMIN).json()[0]  # a refused operator action is audited too
    assert (refused["actor"], refused["action"], refused["target"]) == ("admin", "refused", "/api/v1/models")
    assert refused["details"] == {"method": "POST", "status": 409, "detail": conflict.json()["detail"]}

    device = enroll(client, "dev-a")
    auth = {"Authorization": f"Bearer {device.device_token}"}
    rollout = {"model": "digits", "version": 1, "target": {"devices": ["dev-a"]}, "canary_percent": 0}
    assert client.post("/api/v1/rollouts", json=rollout, headers=ADMIN).status_code == 201  # served to its devices
    targets = json.loads(client.get("/tuf/metadata/2.targets.json", headers=auth).content)["signed"]["targets"]
    path = artifact_target("digits", 1, "raspberry_pi_4", "model.tflite")
    sha = targets[path]["hashes"]["sha256"]
    url = f"/tuf/targets/models/digits/1/raspberry_pi_4/{sha}.model.tflite"
    full = client.get(url, headers=auth)
    assert full.status_code == 200 and hashlib.sha256(full.content).hexdigest() == sha
    assert full.headers["etag"] == f'"{sha}"' and int(full.headers["content-length"]) == len(full.content)
    part = client.get(url, headers={**auth, "Range": "bytes=5-"})
    assert part.status_code == 206 and part.content == full.content[5:]
    assert client.get(url).status_code == 401
    assert client.get("/tuf/metadata/99.root.json", headers=auth).status_code == 404
    assert client.get("/tuf/metadata/1.root.json", headers=auth).content.decode() == device.tuf_root
    assert client.get("/tuf/targets/models/../../keys/root.pem", headers=auth).status_code == 404


def test_bad_uploads_are_4xx_with_a_message(client: TestClient, tmp_path: Path) -> None:
    cases = [
        {"archive": ("x.tar.gz", b"not a tarball")},
        {"files": ("../evil/manifest.json", b"{}")},
        {"files": ("p/manifest.json", b'{"name": 1}')},
    ]
    for files in cases:
        r = client.post("/api/v1/models", files=files, headers=ADMIN)
        assert 400 <= r.status_code < 500 and r.json()["detail"], (files, r.text)
    folder = write_folder(tmp_path / "o", "digits", 1, ["raspberry_pi_4"])
    (folder / "raspberry_pi_4" / "model.tflite").write_bytes(b"tampered")
    r = client.post("/api/v1/models", files={"archive": ("o.tar.gz", tar_gz(folder))}, headers=ADMIN)
    assert r.status_code == 422 and "sha256" in r.json()["detail"]
    assert client.post("/api/v1/models", headers=ADMIN).status_code == 422
    assert client.post("/api/v1/models", files=cases[0]).status_code == 401


def test_multipart_files_upload(client: TestClient, tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "o", "kws", 3, ["esp32_s3"])
    files = [("files", (str(p.relative_to(folder)), p.read_bytes())) for p in folder.rglob("*") if p.is_file()]
    r = client.post("/api/v1/models", files=files, headers=ADMIN)
    assert r.status_code == 201, r.text
    listed = client.get("/api/v1/models", headers=ADMIN).json()
    assert [(m["name"], m["version"], m["profile"]) for m in listed] == [("kws", 3, "esp32_s3")]


def test_enrollment_tokens_devices_and_audit(client: TestClient) -> None:
    tok = client.post("/api/v1/enrollment-tokens", json={"uses": 2, "group": "lab", "tags": {"site": "a"}},
                      headers=ADMIN).json()  # fmt: skip
    body = {"enrollment_token": tok["token"], "profile": "raspberry_pi_4"}
    first = client.post(ENROLL_PATH, json={**body, "device_id": "cam-1"})
    assert first.status_code == 201
    assert client.post(ENROLL_PATH, json={**body, "device_id": "cam-1"}).status_code == 409
    second = client.post(ENROLL_PATH, json={**body, "tags": {"floor": "2"}})
    assert second.status_code == 201 and second.json()["device_id"].startswith("dev-")
    assert client.post(ENROLL_PATH, json=body).status_code == 401  # used up
    assert client.post(ENROLL_PATH, json={**body, "enrollment_token": "x" * 20}).status_code == 401
    devices = client.get("/api/v1/devices", headers=ADMIN).json()
    assert {d["group"] for d in devices} == {"lab"} and devices[0]["tags"]["site"] == "a"
    cam = {"Authorization": f"Bearer {first.json()['device_token']}"}
    assert client.get("/api/v1/devices/cam-1", headers=cam).status_code == 200
    other = second.json()["device_id"]
    assert client.get(f"/api/v1/devices/{other}", headers=cam).status_code == 403
    assert client.get("/api/v1/devices", headers=cam).status_code == 401
    r = client.patch("/api/v1/devices/cam-1", json={"group": "field"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["group"] == "field"
    actions = [e["action"] for e in client.get("/api/v1/audit", headers=ADMIN).json()]
    assert actions[0] == "device.update" and "enrollment_token.create" in actions
    assert client.get("/healthz").json()["database"] is True
    assert client.get("/docs").status_code == 200 and "/api/v1/rollouts" in client.get("/openapi.json").json()["paths"]
    assert "edgefleet_hub_http_requests_total" in client.get("/metrics").text


def test_healthz_is_degraded_while_the_broker_is_out_of_reach(tmp_path: Path) -> None:
    from tests.support.broker import free_port

    settings = HubSettings(data_dir=tmp_path / "data", admin_token="admin-secret-token", mqtt_enabled=True,
                           mqtt_port=free_port())  # fmt: skip  # nothing listens there
    with TestClient(create_app(settings, background=False)) as c:
        health = c.get("/healthz")
        assert health.status_code == 200  # the API still serves: a load balancer keeps the replica
        assert (health.json()["status"], health.json()["mqtt_connected"]) == ("degraded", False)
    with TestClient(create_app(settings.model_copy(update={"mqtt_enabled": False}), background=False)) as c:
        assert c.get("/healthz").json()["status"] == "ok"  # no broker wanted: nothing is missing
