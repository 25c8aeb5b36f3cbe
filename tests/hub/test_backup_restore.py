"""`edgefleet hub backup` / `hub restore`: a consistent archive of a hub that serves and takes pushes, restored
into an empty data dir and database, where a device that saw newer versions than the archive goes on updating."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import JSON, inspect, select
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata
from tuf.ngclient import Updater

from agent.tufclient import TufClient
from edgefleet.cli import cli
from hub import backup_db
from hub.backup import backup, restore, version_floor
from hub.db.engine import make_engine, upgrade
from hub.db.schema import audit_log, devices
from hub.services import init_data_dir
from hub.settings import HubSettings
from hub.tuf_repo import TufRepository
from protocol.http import ENROLL_PATH, EnrollResponse, artifact_target, manifest_target
from protocol.manifest import Manifest
from tests.hub.conftest import pg_schema_url
from tests.hub.e2e import Fleet
from tests.hub.simdevice import SimDevice
from tests.support.broker import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PROFILE = "raspberry_pi_4"
pg_schema = contextlib.contextmanager(pg_schema_url)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def two_databases(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The original hub's database and the empty one to restore into (PostgreSQL: two schemas, one database)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'original.db'}", f"sqlite:///{tmp_path / 'restored' / 'hub.db'}"
        return
    with pg_schema() as original, pg_schema() as restored:
        yield original, restored


def hub_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`edgefleet hub ...` as its own process, configured by EDGEFLEET_HUB_* like the hub it works on."""
    return subprocess.run([sys.executable, "-m", "edgefleet", "hub", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def enroll(fleet: Fleet, device_id: str) -> EnrollResponse:
    """Enroll a simulated device (MQTT) and keep its enrollment, whose token and root a TUF client uses."""
    tok = fleet.api("POST", "/api/v1/enrollment-tokens", json={}).json()["token"]
    r = httpx.post(f"{fleet.url}{ENROLL_PATH}", json={"enrollment_token": tok, "profile": PROFILE,
                   "device_id": device_id}, timeout=30)  # fmt: skip
    assert r.status_code == 201, r.text
    enrolled = EnrollResponse.model_validate(r.json())
    fleet.devices[device_id] = SimDevice(enrolled, PROFILE, fleet.root).connect()
    return enrolled


def roll_out(fleet: Fleet, rollout_id: str, version: int, device_id: str) -> None:
    r = fleet.api("POST", "/api/v1/rollouts", json={"id": rollout_id, "model": "digits", "version": version,
                  "target": {"devices": [device_id]}, "canary_percent": 0, "probation_s": 0.2})  # fmt: skip
    assert r.status_code == 201, r.text
    fleet.wait_rollout(rollout_id, "completed")


def archived_manifest(archive: Path) -> dict[str, Any]:
    with tarfile.open(archive) as tar:
        f = tar.extractfile("edgefleet-backup.json")
        assert f is not None
        manifest: dict[str, Any] = json.loads(f.read())
        return manifest


def test_backup_while_serving_and_pushing_then_restore_keeps_devices_updating(
    tmp_path: Path, unique_root: str, two_databases: tuple[str, str]
) -> None:
    original_db, restored_db = two_databases
    fleet = Fleet(workdir=tmp_path, root=unique_root, db_url=original_db)
    fleet.start_broker()
    fleet.start_hub()
    try:
        fleet.push("digits", 1, [PROFILE])
        enrolled = enroll(fleet, "dev-1")
        roll_out(fleet, "r1", 1, "dev-1")
        device_http = httpx.Client(headers={"Authorization": f"Bearer {enrolled.device_token}"}, timeout=30)

        def device(hub_url: str) -> TufClient:  # one per poll, one metadata cache for the device's life
            return TufClient(tmp_path / "device-tuf", hub_url, device_http, enrolled.tuf_root.encode())

        device(fleet.url).fetch_small_target(manifest_target("digits", 1, PROFILE), tmp_path / "m1.json")

        stop, pushed = threading.Event(), [0]

        def keep_pushing() -> None:
            while not stop.is_set():
                pushed[0] += 1
                fleet.push("load", pushed[0], [PROFILE])

        pusher = threading.Thread(target=keep_pushing)
        pusher.start()
        try:
            while pushed[0] < 2:
                time.sleep(0.01)
            archive = tmp_path / "backups" / "hub.tgz"
            archive.parent.mkdir()
            before = pushed[0]
            made = hub_cli(fleet.env, "backup", str(archive))
            during = pushed[0] - before
        finally:
            stop.set()
            pusher.join(30)
        assert made.returncode == 0, made.stderr
        assert during >= 1, "no push landed while the backup ran"
        assert "mode 0600" in made.stdout and archive.stat().st_mode & 0o777 == 0o600
        assert not [p for p in archive.parent.iterdir() if p != archive]  # no temp files left beside it

        fleet.push("digits", 2, [PROFILE])  # the original publishes on after the backup...
        device(fleet.url).refresh()  # ...and the device sees it: newer versions than the archive holds
        seen = Metadata.from_file(str(tmp_path / "device-tuf" / "timestamp.json")).signed.version
        assert seen > archived_manifest(archive)["tuf"]["timestamp"]

        assert fleet.proc is not None
        fleet.proc.terminate()  # the original hub is lost; the broker and the devices stay
        fleet.proc.wait(15)
        fleet.proc = None
        restored_dir = tmp_path / "restored"
        env = {**fleet.env, "EDGEFLEET_HUB_DATA_DIR": str(restored_dir), "EDGEFLEET_HUB_DATABASE_URL": restored_db}
        done = hub_cli(env, "restore", str(archive))
        assert done.returncode == 0, done.stderr
        assert "re-signed at version" in done.stdout
        again = hub_cli(env, "restore", str(archive))
        assert again.returncode == 1 and again.stderr.count("\n") == 1 and "is not empty" in again.stderr

        fleet.env, fleet.port = env, free_port()
        fleet.env["EDGEFLEET_HUB_PUBLIC_URL"] = fleet.url
        fleet.start_hub()
        client = device(fleet.url)  # its cache holds the versions it saw at the original, after the backup
        manifest = Manifest.from_json(client.fetch_small_target(manifest_target("digits", 1, PROFILE),
                                                                tmp_path / "m1-restored.json"))  # fmt: skip
        info = client.target_info(artifact_target("digits", 1, PROFILE, manifest.artifact.file))
        artifact = tmp_path / "artifact"
        artifact.write_bytes(device_http.get(client.target_url(info)).raise_for_status().content)
        client.verify_file(info, artifact)

        # every model the restored database names has its files; nothing pushed after the snapshot is named
        repo = TufRepository(restored_dir / "tuf")
        models = fleet.api("GET", "/api/v1/models").json()
        assert ("digits", 1) in {(m["name"], m["version"]) for m in models}
        assert ("digits", 2) not in {(m["name"], m["version"]) for m in models}
        for m in models:
            assert repo.target_file(m["manifest_target"]).is_file() and repo.target_file(m["artifact_target"]).is_file()

        fleet.push("digits", 3, [PROFILE])  # the restored hub rolls out on: the device converges over MQTT
        roll_out(fleet, "r3", 3, "dev-1")
        assert fleet.devices["dev-1"].active == {"digits": 3}
        assert device(fleet.url).fetch_small_target(manifest_target("digits", 3, PROFILE), tmp_path / "m3.json")
    finally:
        fleet.stop()


def _initialised(data_dir: Path, url: str) -> HubSettings:
    settings = HubSettings(data_dir=data_dir, database_url=url)
    init_data_dir(settings)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    return settings


def _fill(url: str) -> None:
    """Rows that make a copy show its mistakes: SQL NULL vs JSON null, datetimes, serial ids."""
    now = datetime(2026, 5, 1, 12, 30, 15, 123456, tzinfo=UTC)
    common = {"profile": PROFILE, "group_name": None, "tags": ["a"], "mqtt_password_hash": "h", "agent_version": "1",
              "online": False, "enrolled_at": now, "reported": {"x": 1}}  # fmt: skip
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(devices.insert(), {**common, "id": "d-sql-null", "token_sha256": "0" * 64})
        conn.execute(devices.insert(), [{**common, "id": "d-json-null", "token_sha256": "1" * 64, "desired": None},
                                        {**common, "id": "d-json", "token_sha256": "2" * 64, "desired": {"m": []}}])
        conn.execute(audit_log.insert(), [{"ts": now, "actor": "t", "action": f"a{i}", "target": "x", "details": {}}
                                          for i in range(3)])  # fmt: skip
    engine.dispose()


def _rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    engine = make_engine(url)
    out: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for t in backup_db.hub_tables():
            json_nulls = [c.is_(None) for c in t.columns if isinstance(c.type, JSON)]
            pk = list(t.primary_key.columns)
            out[t.name] = [tuple(r) for r in conn.execute(select(*t.columns, *json_nulls).order_by(*pk))]
    engine.dispose()
    return out


@pytest.mark.postgres
@pytest.mark.parametrize(("source", "target"), [("sqlite", "postgresql"), ("postgresql", "sqlite")])
def test_restore_across_backends_keeps_every_row_exact(tmp_path: Path, source: str, target: str) -> None:
    with contextlib.ExitStack() as stack:
        urls = {"sqlite": f"sqlite:///{tmp_path / ('src.db' if source == 'sqlite' else 'dst.db')}",
                "postgresql": stack.enter_context(pg_schema())}  # fmt: skip
        settings = _initialised(tmp_path / "a", urls[source])
        _fill(urls[source])
        summary = backup(settings, tmp_path / "x.tgz")
        assert summary.database == source and summary.devices == 3
        done = restore(HubSettings(data_dir=tmp_path / "b", database_url=urls[target]), tmp_path / "x.tgz")
        assert done.devices == 3 and done.version >= version_floor() - 60_000_000
        assert _rows(urls[target]) == _rows(urls[source])
        engine = make_engine(urls[target])  # ids continue after the copied ones
        with engine.begin() as conn:
            new = conn.execute(audit_log.insert().values(ts=datetime.now(UTC), actor="t", action="after",
                                                         target="x", details={}))  # fmt: skip
            assert new.inserted_primary_key[0] == 4
        engine.dispose()
        assert (tmp_path / "b" / "admin_token").read_text() == (tmp_path / "a" / "admin_token").read_text()


@pytest.mark.postgres
def test_restore_refuses_a_target_that_is_not_empty_unless_forced(tmp_path: Path) -> None:
    settings = _initialised(tmp_path / "a", f"sqlite:///{tmp_path / 'a' / 'hub.db'}")
    _fill(settings.resolved_database_url())
    runner = CliRunner()
    made = runner.invoke(cli, ["hub", "backup", str(tmp_path / "x.tgz"), "--data-dir", str(tmp_path / "a")])
    assert made.exit_code == 0, made.output
    refused = runner.invoke(cli, ["hub", "restore", str(tmp_path / "x.tgz"), "--data-dir", str(tmp_path / "a")])
    assert refused.exit_code == 1 and refused.output.count("\n") == 1
    assert refused.output.startswith("Error: data dir ") and "is not empty" in refused.output
    assert "--force" in refused.output
    with pg_schema() as pg:  # an empty data dir, but a database with rows
        _fill(_initialised(tmp_path / "pg-src", pg).resolved_database_url())
        refused = runner.invoke(cli, ["hub", "restore", str(tmp_path / "x.tgz"), "--data-dir", str(tmp_path / "c"),
                                      "--database-url", pg])  # fmt: skip
        assert refused.exit_code == 1 and "has rows): restore into an empty one, or --force" in refused.output
        assert not (tmp_path / "c").exists()  # refused before touching anything
    forced = runner.invoke(cli, ["hub", "restore", str(tmp_path / "x.tgz"), "--data-dir", str(tmp_path / "a"),
                                 "--force"])  # fmt: skip
    assert forced.exit_code == 0, forced.output
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith("edgefleet-restore-")]
    damaged = tmp_path / "damaged.tgz"
    damaged.write_bytes((tmp_path / "x.tgz").read_bytes()[:-200])
    refused = runner.invoke(cli, ["hub", "restore", str(damaged), "--data-dir", str(tmp_path / "d")])
    assert refused.exit_code == 1 and "not a readable hub backup" in refused.output


def test_a_restored_repository_is_above_what_devices_saw_and_the_raw_archive_would_not_be(tmp_path: Path) -> None:
    """The version rule, and that it is needed: the archive's own versions are a rollback to a device."""
    settings = _initialised(tmp_path / "a", f"sqlite:///{tmp_path / 'a' / 'hub.db'}")
    original = TufRepository(settings.tuf_dir)
    original.add_targets({"models/digits/1/p/manifest.json": b"one"})
    backup(settings, tmp_path / "x.tgz")
    for i in range(3):  # the original publishes on after the backup
        original.add_targets({f"models/digits/{i + 2}/p/manifest.json": b"more"})
    with _served(original.path) as url:
        _updater(tmp_path / "device", url, original.root_bytes()).refresh()
    archived = tmp_path / "raw"
    with tarfile.open(tmp_path / "x.tgz") as tar:
        tar.extractall(archived, filter="data")
    with _served(archived / "tuf") as url, pytest.raises(tuf_errors.BadVersionNumberError):
        _updater(tmp_path / "device", url, None).refresh()
    restore(HubSettings(data_dir=tmp_path / "b"), tmp_path / "x.tgz")
    restored = TufRepository(tmp_path / "b" / "tuf")
    assert restored.load("timestamp").signed.version >= version_floor() - 60_000_000
    with _served(restored.path) as url:
        updater = _updater(tmp_path / "device", url, None)
        updater.refresh()
        info = updater.get_targetinfo("models/digits/1/p/manifest.json")
        assert info is not None and Path(updater.download_target(info)).read_bytes() == b"one"
        assert updater.get_targetinfo("models/digits/2/p/manifest.json") is None  # not in the archive


def test_every_migrated_table_is_known_to_the_backup(tmp_path: Path) -> None:
    """A table a migration adds must be on hub.db.schema's metadata, or backups refuse (they never drop it)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'm.db'}")
    upgrade(engine)
    with engine.connect() as conn:
        names = set(inspect(conn).get_table_names()) - {"alembic_version"}
    engine.dispose()
    # blobs (storage_backend=postgresql) is archived as the TUF files it names, not as rows
    assert names <= {t.name for t in backup_db.hub_tables()} | backup_db.STORAGE_TABLES


@contextlib.contextmanager
def _served(directory: Path) -> Iterator[str]:
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _updater(client: Path, url: str, bootstrap: bytes | None) -> Updater:
    (client / "meta").mkdir(parents=True, exist_ok=True)
    (client / "dl").mkdir(parents=True, exist_ok=True)
    return Updater(metadata_dir=str(client / "meta"), metadata_base_url=f"{url}/metadata/",
                   target_dir=str(client / "dl"), target_base_url=f"{url}/targets/", bootstrap=bootstrap)  # fmt: skip
