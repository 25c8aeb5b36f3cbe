"""Replicas sharing a data dir in one process (PostgreSQL): start-up sweeps only when alone, one broker hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from hub.mqtt.auth import HUB_USERNAME
from hub.security import mosquitto_hash
from hub.services import Hub, _hash_matches
from hub.settings import HubSettings
from hub.uploads import PUSH_DIR_PREFIX

pytestmark = [pytest.mark.postgres, pytest.mark.integration]


def settings(tmp_path: Path, pg_url: str, **extra: object) -> HubSettings:
    return HubSettings(data_dir=tmp_path / "shared", database_url=pg_url, admin_token="t" * 20, mqtt_enabled=False,
                       **extra)  # type: ignore[arg-type]  # fmt: skip


def test_crash_leftovers_are_swept_only_by_a_replica_that_starts_alone(tmp_path: Path, pg_url: str) -> None:
    first = Hub(settings=settings(tmp_path, pg_url))
    upload = tmp_path / "shared" / f"{PUSH_DIR_PREFIX}in-flight"
    upload.mkdir()
    (upload / "part").write_bytes(b"x" * 10)
    second = Hub(settings=settings(tmp_path, pg_url))  # another replica is running: its upload is no leftover
    assert upload.exists()
    second.stop()
    first.stop()
    third = Hub(settings=settings(tmp_path, pg_url))  # alone: whatever is there was left by a crash
    try:
        assert not upload.exists()
    finally:
        third.stop()


def test_replicas_reuse_the_hub_broker_hash_in_the_shared_password_file(tmp_path: Path, pg_url: str) -> None:
    auth = {"mosquitto_password_file": tmp_path / "auth" / "passwd", "mosquitto_acl_file": tmp_path / "auth" / "acl"}
    hubs = [Hub(settings=settings(tmp_path, pg_url, **auth)) for _ in range(2)]
    try:
        lines = []
        for hub in hubs:
            hub.sync_broker_auth()
            lines.append(next(x for x in auth["mosquitto_password_file"].read_text().splitlines()
                              if x.startswith(f"{HUB_USERNAME}:")))  # fmt: skip
        assert lines[0] == lines[1]  # an unchanged line: mosquitto's reload keeps every replica connected
        assert _hash_matches(lines[0].split(":", 1)[1], hubs[0].mqtt_password)
    finally:
        for hub in hubs:
            hub.stop()


def test_hash_check_accepts_only_the_password_it_was_made_from() -> None:
    hashed = mosquitto_hash("right")
    assert _hash_matches(hashed, "right") and not _hash_matches(hashed, "wrong")
    assert not _hash_matches("$6$x$y", "right") and not _hash_matches("$7$101$!!$!!", "right")
