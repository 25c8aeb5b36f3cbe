"""A device downloads a model version's manifest and artifact only while it is rolled out to it (hub/access.py).

The real hub app (TestClient, background jobs off: rollouts are started, aborted and rolled back through the
API, which persists each device's desired state at once) on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import event

from hub.api.main import create_app
from hub.services import Hub
from hub.settings import HubSettings
from hub.store import devices as device_store
from protocol.http import ENROLL_PATH, TUF_TARGETS_PATH
from tests.hub.conftest import pg_schema_url
from tests.hub.support import tar_gz, write_folder

ADMIN = {"Authorization": "Bearer access-admin-token"}
PI, GATEWAY = "raspberry_pi_4", "x86_gateway"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hub.db'}"
    else:
        yield from pg_schema_url()


@pytest.fixture
def client(tmp_path: Path, db_url: str) -> Iterator[TestClient]:
    settings = HubSettings(data_dir=tmp_path / "data", database_url=db_url, admin_token="access-admin-token",
                           mqtt_enabled=False)  # fmt: skip
    with TestClient(create_app(settings, background=False)) as c:
        yield c


def hub_of(client: TestClient) -> Hub:
    hub: Hub = client.app.state.hub  # type: ignore[attr-defined]
    return hub


def push(client: TestClient, tmp_path: Path, version: int, profiles: tuple[str, ...] = (PI, GATEWAY)) -> None:
    folder = write_folder(tmp_path / f"out-{version}", "digits", version, list(profiles))
    r = client.post("/api/v1/models", files={"archive": ("o.tar.gz", tar_gz(folder))}, headers=ADMIN)
    assert r.status_code == 201, r.text


def enroll(client: TestClient, device_id: str, profile: str = PI) -> dict[str, str]:
    tok = client.post("/api/v1/enrollment-tokens", json={}, headers=ADMIN).json()["token"]
    r = client.post(ENROLL_PATH, json={"enrollment_token": tok, "profile": profile, "device_id": device_id})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['device_token']}"}


def urls(client: TestClient, version: int, profile: str = PI) -> dict[str, str]:
    """The registry's manifest route and the hash-named TUF URLs of the manifest and the artifact."""
    targets = hub_of(client).repo.targets()
    out = {"api": f"/api/v1/models/digits/versions/{version}/{profile}/manifest"}
    for kind, file in (("manifest", "manifest.json"), ("artifact", "model.tflite")):
        sha = targets[f"models/digits/{version}/{profile}/{file}"].hashes["sha256"]
        out[kind] = f"{TUF_TARGETS_PATH}models/digits/{version}/{profile}/{sha}.{file}"
    return out


def statuses(client: TestClient, auth: dict[str, str], version: int, profile: str = PI) -> set[int]:
    """Status codes of the three downloads of one version (one code when they agree, as they should)."""
    return {client.get(url, headers=auth).status_code for url in urls(client, version, profile).values()}


def rollout(client: TestClient, rollout_id: str, version: int, devices: list[str], start: bool = True) -> None:
    r = client.post("/api/v1/rollouts", headers=ADMIN, json={
        "id": rollout_id, "model": "digits", "version": version, "target": {"devices": devices},
        "canary_percent": 0, "stages": [100], "start": start})  # fmt: skip
    assert r.status_code == 201, r.text


def verb(client: TestClient, rollout_id: str, name: str) -> None:
    r = client.post(f"/api/v1/rollouts/{rollout_id}/{name}", headers=ADMIN)
    assert r.status_code == 200, r.text


def refusals(client: TestClient) -> dict[str, float]:
    """edgefleet_hub_artifact_refusals_total by reason."""
    families = text_string_to_metric_families(client.get("/metrics").text)
    family = next(f for f in families if f.name == "edgefleet_hub_artifact_refusals")
    return {s.labels["reason"]: s.value for s in family.samples if s.name.endswith("_total")}


def test_only_devices_a_version_is_rolled_out_to_may_download_it(client: TestClient, tmp_path: Path) -> None:
    push(client, tmp_path, 1)
    push(client, tmp_path, 2)
    a, b, gw = enroll(client, "dev-a"), enroll(client, "dev-b"), enroll(client, "gw-1", GATEWAY)
    assert statuses(client, a, 1) == {403}  # enrolled, but nothing rolled out yet

    rollout(client, "r1", 1, ["dev-a", "gw-1"])
    assert statuses(client, a, 1) == {200}
    full = client.get(urls(client, 1)["artifact"], headers=a)
    part = client.get(urls(client, 1)["artifact"], headers={**a, "Range": "bytes=3-"})
    assert part.status_code == 206 and part.content == full.content[3:]
    assert full.headers["cache-control"].startswith("private")  # no shared cache hands it to another client

    refused = client.get(urls(client, 1)["artifact"], headers=b)  # same profile, not in the rollout
    assert refused.status_code == 403 and "not in device dev-b's desired state" in refused.json()["detail"]
    assert statuses(client, b, 1) == {403}
    assert client.get(urls(client, 1)["artifact"], headers={**b, "Range": "bytes=3-"}).status_code == 403
    assert statuses(client, gw, 1, GATEWAY) == {200}
    other = client.get(urls(client, 1)["api"], headers=gw)  # its rollout, another profile's build
    assert other.status_code == 403 and "its profile is x86_gateway" in other.json()["detail"]
    assert statuses(client, gw, 1) == {403}
    assert statuses(client, a, 2) == {403}  # no rollout targets v2 yet
    unknown = client.get("/api/v1/models/digits/versions/9/raspberry_pi_4/manifest", headers=a)
    assert unknown.status_code == 403  # a device cannot probe which versions exist

    verb(client, "r1", "abort")  # the desired state stays v1; a second rollout of the model may start
    rollout(client, "r2", 2, ["dev-a"])
    assert statuses(client, a, 2) == {200}
    assert statuses(client, a, 1) == {200}  # r2's rollback target
    verb(client, "r2", "rollback")
    assert statuses(client, a, 1) == {200}  # desired again
    assert statuses(client, a, 2) == {200}  # r2's version, released to dev-a: a cut-off download still completes
    assert statuses(client, b, 2) == {403}

    for version in (1, 2):  # the admin downloads anything
        for profile in (PI, GATEWAY):
            assert statuses(client, ADMIN, version, profile) == {200}
    for auth in (a, b, gw):  # TUF metadata stays readable by every enrolled device
        for name in ("timestamp.json", "1.root.json", "root.json"):
            assert client.get(f"/tuf/metadata/{name}", headers=auth).status_code == 200
    assert client.get(urls(client, 1)["artifact"]).status_code == 401

    counted = refusals(client)
    assert counted == {"not_desired": 15, "other_profile": 4}  # every 403 above, by reason


def test_older_rollouts_and_reported_versions_grant_nothing(client: TestClient, tmp_path: Path) -> None:
    for version in (1, 2, 3):
        push(client, tmp_path, version, (PI,))
    a = enroll(client, "dev-a")
    rollout(client, "r1", 1, ["dev-a"])
    verb(client, "r1", "abort")
    rollout(client, "r2", 2, ["dev-a"])
    verb(client, "r2", "abort")
    rollout(client, "r3", 3, ["dev-a"])
    assert statuses(client, a, 3) == {200}
    assert statuses(client, a, 2) == {200}  # the rollback target of the latest rollout
    assert statuses(client, a, 1) == {403}  # two rollouts ago: neither desired nor the rollback target

    b = enroll(client, "dev-b")  # the reported state is the device's own word: naming a version there grants nothing
    reported = {
        "device_id": "dev-b",
        "profile": PI,
        "agent_version": "t",
        "reported_at": "2025-01-01T00:00:00Z",
        "models": [{"name": "digits", "active_version": 2, "previous_version": 1, "target_version": 3}],
    }
    with hub_of(client).engine.begin() as conn:
        device_store.record_reported(conn=conn, now=hub_of(client).clock(), device_id="dev-b", reported=reported)
    for version in (1, 2, 3):
        assert statuses(client, b, version) == {403}
    rollout(client, "r-b", 3, ["dev-b"], start=False)  # records v2 (what dev-b says it runs) as its rollback target
    assert client.get("/api/v1/rollouts/r-b", headers=ADMIN).json()["devices"][0]["previous_version"] == 2
    for version in (2, 3):
        assert statuses(client, b, version) == {403}  # nothing released to dev-b yet


def test_a_shadowed_candidate_is_served_to_the_devices_shadowing_it_only(client: TestClient, tmp_path: Path) -> None:
    push(client, tmp_path, 1, (PI,))
    push(client, tmp_path, 2, (PI,))
    a, b = enroll(client, "dev-a"), enroll(client, "dev-b")
    rollout(client, "r1", 1, ["dev-a", "dev-b"])
    verb(client, "r1", "abort")  # both run v1 (no ticks here: it would complete once they report it)
    r = client.post("/api/v1/rollouts", headers=ADMIN, json={
        "id": "r2", "model": "digits", "version": 2, "target": {"devices": ["dev-a", "dev-b"]},
        "canary_percent": 50, "stages": [100], "shadow": {"fraction": 0.5}})  # fmt: skip
    assert r.status_code == 201, r.text
    devices = {d["id"]: d for d in client.get("/api/v1/devices", headers=ADMIN).json()}
    shadowing = [d for d, v in devices.items() if v["shadowing"] == {"digits": 2}]
    assert len(shadowing) == 1 and all(v["desired_versions"] == {"digits": 1} for v in devices.values())
    auth = {"dev-a": a, "dev-b": b}
    other = ({"dev-a", "dev-b"} - set(shadowing)).pop()
    assert statuses(client, auth[shadowing[0]], 2) == {200}  # the canary's candidate, before it runs it
    assert statuses(client, auth[other], 2) == {403}  # wave 1 is not shadowing yet
    verb(client, "r2", "abort")  # the shadow ends: so does the access (the rollout never released v2 to it)
    assert statuses(client, auth[shadowing[0]], 2) == {403}


def test_devices_get_only_model_targets(client: TestClient) -> None:
    hub = hub_of(client)
    hub.repo.add_targets({"firmware/boot.bin": b"not a model"})
    sha = hub.repo.targets()["firmware/boot.bin"].hashes["sha256"]
    url = f"{TUF_TARGETS_PATH}firmware/{sha}.boot.bin"
    refused = client.get(url, headers=enroll(client, "dev-a"))
    assert refused.status_code == 403 and "model versions they are told to run" in refused.json()["detail"]
    assert client.get(url, headers=ADMIN).content == b"not a model"
    assert refusals(client) == {"not_a_model": 1.0}


def test_a_desired_download_queries_no_rollout_table(client: TestClient, tmp_path: Path) -> None:
    """Every Range request is checked: the desired state (loaded with the token) settles it without a query;
    only a version that is not desired costs one indexed query of the device's latest rollout of the model."""
    push(client, tmp_path, 1, (PI,))
    push(client, tmp_path, 2, (PI,))
    a = enroll(client, "dev-a")
    rollout(client, "r1", 1, ["dev-a"])
    verb(client, "r1", "abort")
    rollout(client, "r2", 2, ["dev-a"])
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engine = hub_of(client).engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        for version, rollout_queries in ((2, 0), (1, 1)):
            statements.clear()
            r = client.get(urls(client, version)["artifact"], headers={**a, "Range": "bytes=0-3"})
            assert r.status_code == 206
            assert sum("rollout_devices" in s for s in statements) == rollout_queries, statements
    finally:
        event.remove(engine, "before_cursor_execute", seen)
