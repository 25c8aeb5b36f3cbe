"""Delta updates at push (hub/deltas.py): a signed zstd patch per earlier version, only when it saves 20 %.

The real hub app in-process (TestClient) on SQLite and PostgreSQL, pushes through the API, metadata and targets
read as a device reads them (signed targets metadata, hash-named URLs behind the per-device rule).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from agent import delta as agent_delta
from hub import deltas
from hub.access import target_model
from hub.api.main import create_app
from hub.api.routes.tuf import HASHED_NAME
from hub.settings import HubSettings
from protocol.http import artifact_target, patch_target
from tests.hub.support import tar_gz, write_folder
from tests.hub.test_api import ADMIN, enroll

PROFILES = ["raspberry_pi_4", "x86_gateway"]


@pytest.fixture
def client(tmp_path: Path, db_url: str) -> Iterator[TestClient]:
    settings = HubSettings(
        data_dir=tmp_path / "data", database_url=db_url, admin_token="admin-secret-token", mqtt_enabled=False
    )
    with TestClient(create_app(settings, background=False)) as c:
        yield c


def payload(seed: int, size: int = 200_000) -> bytes:
    """Incompressible bytes: any saving a patch makes comes from the earlier version, not from compression."""
    return random.Random(seed).randbytes(size)


def push(client: TestClient, tmp_path: Path, version: int, body: bytes) -> None:
    folder = write_folder(tmp_path / f"out{version}", "digits", version, PROFILES, payload=body)
    r = client.post("/api/v1/models", files={"archive": ("o.tar.gz", tar_gz(folder))}, headers=ADMIN)
    assert r.status_code == 201, r.text


def signed_targets(client: TestClient, headers: dict[str, str]) -> dict[str, Any]:
    """The targets of the newest signed metadata, followed as a TUF client does: timestamp -> snapshot -> targets."""
    ts = json.loads(client.get("/tuf/metadata/timestamp.json", headers=headers).content)["signed"]
    snapshot_version = ts["meta"]["snapshot.json"]["version"]
    snap = json.loads(client.get(f"/tuf/metadata/{snapshot_version}.snapshot.json", headers=headers).content)
    targets_version = snap["signed"]["meta"]["targets.json"]["version"]
    signed = json.loads(client.get(f"/tuf/metadata/{targets_version}.targets.json", headers=headers).content)
    targets: dict[str, Any] = signed["signed"]["targets"]
    return targets


def patches_of(targets: dict[str, Any], version: int, profile: str = "raspberry_pi_4") -> set[int]:
    prefix = artifact_target("digits", version, profile, "model.tflite") + ".from-"
    return {int(p.removeprefix(prefix).removesuffix(".zstd")) for p in targets if p.startswith(prefix)}


def test_push_signs_a_patch_per_earlier_version_only_when_it_saves_20_percent(
    client: TestClient, tmp_path: Path
) -> None:
    """v1, v2, v4, v5, v6 share their bytes but for a suffix; v3 is other bytes altogether (a full retrain)."""
    for version in range(1, 7):
        push(client, tmp_path, version, payload(seed=3 if version == 3 else 1))
    targets = signed_targets(client, ADMIN)
    assert patches_of(targets, 1) == set()  # nothing earlier
    assert patches_of(targets, 2) == {1}
    assert patches_of(targets, 3) == set()  # saves < 20 % against v2 and v1: the full download is chosen
    assert patches_of(targets, 4) == {2, 1}  # v3 is among the 3 earlier ones but its patch saves nothing
    assert patches_of(targets, 6) == {5, 4}  # the 3 newest earlier versions only: not v2, v1
    assert patches_of(targets, 6, "x86_gateway") == {5, 4}  # each profile against its own earlier builds
    patch = targets[deltas.patch_target(artifact_target("digits", 2, "raspberry_pi_4", "model.tflite"), 1)]
    full = targets[artifact_target("digits", 2, "raspberry_pi_4", "model.tflite")]
    assert patch["length"] < 0.01 * full["length"] and len(patch["hashes"]["sha256"]) == 64


def test_a_device_downloads_the_patch_of_its_rollout_and_rebuilds_the_artifact(
    client: TestClient, tmp_path: Path
) -> None:
    push(client, tmp_path, 1, payload(1))
    push(client, tmp_path, 2, payload(1))
    device = enroll(client, "dev-a")
    auth = {"Authorization": f"Bearer {device.device_token}"}
    rollout = {"model": "digits", "version": 2, "target": {"devices": ["dev-a"]}, "canary_percent": 0}
    assert client.post("/api/v1/rollouts", json=rollout, headers=ADMIN).status_code == 201
    targets = signed_targets(client, auth)
    artifact = artifact_target("digits", 2, "raspberry_pi_4", "model.tflite")
    path = agent_delta.patch_target(artifact, 1)  # the name the agent looks up
    info = targets[path]
    url = f"/tuf/targets/models/digits/2/raspberry_pi_4/{info['hashes']['sha256']}.model.tflite.from-1.zstd"
    got = client.get(url, headers=auth)
    assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == info["hashes"]["sha256"]
    ranged = client.get(url, headers={**auth, "Range": "bytes=10-"})  # patches resume like artifacts
    assert ranged.status_code == 206 and ranged.content == got.content[10:]
    (tmp_path / "patch").write_bytes(got.content)
    v1 = tmp_path / "out1" / "raspberry_pi_4" / "model.tflite"
    agent_delta.apply_patch(v1, tmp_path / "patch", tmp_path / "rebuilt", targets[artifact]["length"])
    rebuilt = (tmp_path / "rebuilt").read_bytes()
    assert hashlib.sha256(rebuilt).hexdigest() == targets[artifact]["hashes"]["sha256"]

    other = enroll(client, "dev-b")  # same profile, not in the rollout: the access rule covers the patch too
    assert client.get(url, headers={"Authorization": f"Bearer {other.device_token}"}).status_code == 403
    assert client.get(url).status_code == 401


def test_a_patch_that_cannot_be_made_never_fails_the_push(
    client: TestClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """v1's stored artifact is damaged: v2 is still stored and signed, without a patch, and the log says why."""
    push(client, tmp_path, 1, payload(1))
    repo = client.app.state.hub.repo  # type: ignore[attr-defined]
    key = repo.target_key(artifact_target("digits", 1, "raspberry_pi_4", "model.tflite"))
    repo.storage.write_bytes(key, b"damaged")  # through the storage interface: files or large objects alike
    with caplog.at_level(logging.WARNING, logger="hub.deltas"):
        push(client, tmp_path, 2, payload(1))
    targets = signed_targets(client, ADMIN)
    assert artifact_target("digits", 2, "raspberry_pi_4", "model.tflite") in targets
    assert patches_of(targets, 2) == set() and patches_of(targets, 2, "x86_gateway") == {1}
    assert "no patch from version 1" in caplog.text and "sha256" in caplog.text


def test_hub_and_agent_agree_on_names_windows_and_access() -> None:
    artifact = artifact_target("digits", 7, "raspberry_pi_4", "digits-v7-tflite_fp32.tflite")
    target = patch_target(artifact, 5)  # one name for both sides: protocol/http.py
    assert target == "models/digits/7/raspberry_pi_4/digits-v7-tflite_fp32.tflite.from-5.zstd"
    ref = target_model(target)  # hub/access.py: a file of version 7, downloadable under version 7's rule
    assert ref is not None and (ref.name, ref.version, ref.profile) == ("digits", 7, "raspberry_pi_4")
    assert HASHED_NAME.match(f"{'a' * 64}.{target.rsplit('/', 1)[-1]}")
    for old, new in ((1, 1), (48_000, 47_000), (5 << 20, 5 << 20), (300 << 20, 100 << 20)):
        assert deltas.window_log(old, new) <= agent_delta.window_log(old, new)  # the device accepts what the hub makes
        assert 2 ** deltas.window_log(old, new) >= old + new or deltas.window_log(old, new) == 31


def test_the_20_percent_rule_and_a_name_too_long_to_serve() -> None:
    assert deltas.worth_offering(80, 100) and not deltas.worth_offering(81, 100)
    old, new = payload(1, 50_000), payload(1, 50_000)[:-100] + payload(2, 100)
    long_file = "m" * 100 + ".tflite"  # `<sha256>.<file>.from-1.zstd` would pass the 128 characters served
    assert deltas.patch_for(artifact=f"models/m/2/p/{long_file}", new=new, from_version=1, old=old) is None
    patch = deltas.patch_for(artifact="models/m/2/p/m.tflite", new=new, from_version=1, old=old)
    assert patch is not None and patch.target == "models/m/2/p/m.tflite.from-1.zstd" and len(patch.data) < 1000
    unrelated = deltas.patch_for(artifact="models/m/2/p/m.tflite", new=payload(3, 50_000), from_version=1, old=old)
    assert unrelated is None
