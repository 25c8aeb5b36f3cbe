"""The operator CLI against a hub served by uvicorn: init, push, devices, rollouts, readable errors."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner

from edgefleet.cli import cli
from hub.api.main import create_app
from hub.settings import HubSettings
from protocol.http import ENROLL_PATH
from tests.hub.support import write_folder
from tests.support.broker import free_port

TOKEN = "cli-admin-token-0123456789"


@pytest.fixture
def hub_url(tmp_path: Path) -> Iterator[str]:
    settings = HubSettings(data_dir=tmp_path / "data", admin_token=TOKEN, mqtt_enabled=False)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(20)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_operator_verbs(hub_url: str, tmp_path: Path) -> None:
    auth = ["--hub", hub_url, "--token", TOKEN]
    folder = write_folder(tmp_path / "out", "digits", 1, ["raspberry_pi_4"])
    code, out = run("models", "push", str(folder), *auth)
    assert code == 0 and "stored" in out and "raspberry_pi_4" in out
    code, out = run("models", "push", str(folder), *auth)
    assert code == 0 and "unchanged" in out
    code, token = run("devices", "enroll-token", "--uses", "2", "--group", "lab", *auth)
    assert code == 0
    for i in range(2):
        r = httpx.post(f"{hub_url}{ENROLL_PATH}", json={"enrollment_token": token.strip(),
                       "profile": "raspberry_pi_4", "device_id": f"cli-{i}"})  # fmt: skip
        assert r.status_code == 201
    code, out = run("devices", "list", *auth)
    assert code == 0 and "cli-0" in out and "offline" in out
    code, out = run("rollouts", "create", "digits", "1", "--id", "rc", "--group", "lab", "--canary", "50", *auth)
    assert code == 0 and "rollout rc" in out and "running" in out
    text = " ".join(out.split())  # the table's title wraps
    assert "at wave 0 (canary) of 0-1" in text and "│ 0 (canary) │" in text  # waves from 0, as in the API
    assert run("rollouts", "pause", "rc", *auth)[1].count("paused") >= 1
    code, out = run("rollouts", "resume", "rc", *auth)
    assert code == 0 and "running" in out
    code, out = run("rollouts", "rollback", "rc", "--device", "cli-0", *auth)
    assert code == 0 and "rolled_back" in out
    code, out = run("rollouts", "abort", "rc", *auth)
    assert code == 0 and "aborted" in out
    code, out = run("rollouts", "list", *auth)
    assert code == 0 and "aborted" in out and "0: 0/1, 1: 0/1" in out, out  # healthy of devices, per wave from 0
    code, out = run("rollouts", "create", "digits", "1", "--id", "rs", "--device", "cli-0", "--canary", "0",
                    "--shadow-fraction", "0.25", "--shadow-min-samples", "50", *auth)  # fmt: skip
    assert code == 0 and "shadow" in out and "collecting: 0 rows" in out, out  # a shadow phase, defaults for the rest
    shadow = httpx.get(f"{hub_url}/api/v1/rollouts/rs", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert shadow["spec"]["shadow"] == {"fraction": 0.25, "min_samples": 50, "max_disagreement": 0.05,
                                        "max_latency_ratio": 1.5, "max_duration_s": 3600.0}  # fmt: skip
    code, out = run("rollouts", "create", "digits", "1", "--device", "cli-0", "--shadow-fraction", "2", *auth)
    assert code == 1 and "fraction" in out and len(out.strip().splitlines()) == 1, out
    assert run("devices", "decommission", "cli-1", *auth) == (0, "decommissioned cli-1\n")
    code, out = run("devices", "decommission", "cli-1", *auth)
    assert code == 1 and "404" in out


def test_errors_are_one_line_and_nonzero(hub_url: str, tmp_path: Path) -> None:
    auth = ["--hub", hub_url, "--token", TOKEN]
    code, out = run("rollouts", "pause", "nope", *auth)
    assert code == 1 and out.strip() == "Error: hub said 404: no rollout 'nope'"
    code, out = run("rollouts", "create", "digits", "9", "--stages", "50,20", *auth)
    assert code == 1 and "increasing" in out and len(out.strip().splitlines()) == 1
    code, out = run("devices", "list", "--hub", hub_url, "--token", "wrong")
    assert code == 1 and "401" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out = run("models", "push", str(empty), *auth)
    assert code == 1 and "manifest.json" in out


def test_hub_init_writes_keys_and_token(tmp_path: Path) -> None:
    code, out = run("hub", "init", "--data-dir", str(tmp_path / "d"))
    assert code == 0 and "admin token" in out
    assert (tmp_path / "d" / "tuf" / "keys" / "root.pem").stat().st_mode & 0o777 == 0o600
    code, out = run("hub", "init", "--data-dir", str(tmp_path / "d"))
    assert code == 0 and "already initialised" in out


def test_root_key_kept_offline_signs_a_new_root(tmp_path: Path) -> None:
    data = tmp_path / "d"
    assert run("hub", "init", "--data-dir", str(data))[0] == 0
    offline = tmp_path / "usb" / "root.pem"
    offline.parent.mkdir()
    (data / "tuf" / "keys" / "root.pem").rename(offline)
    code, out = run("hub", "sign-root", "--data-dir", str(data))
    assert code == 1 and "offline" in out and len(out.strip().splitlines()) == 1
    code, out = run("hub", "sign-root", "--data-dir", str(data), "--root-key", str(offline), "--days", "30")
    assert code == 0 and "signed 2.root.json" in out
    assert (data / "tuf" / "metadata" / "2.root.json").exists()


def test_rollback_that_would_leave_devices_with_nothing_needs_yes() -> None:
    from hub.rollouts_cli import left_with_nothing, progress

    ro = {"devices": [
        {"device_id": "a", "state": "healthy", "previous_version": None},
        {"device_id": "b", "state": "healthy", "previous_version": 1},
        {"device_id": "c", "state": "pending", "previous_version": None},
        {"device_id": "d", "state": "probation", "previous_version": None},
    ]}  # fmt: skip
    assert left_with_nothing(ro, None, None) == ["a", "d"]
    assert left_with_nothing(ro, "b", None) == []
    assert left_with_nothing(ro, None, {"d"}) == ["d"]
    waves = [{"total": 1, "released": True, "counts": {"healthy": 1}},
             {"total": 3, "released": True, "counts": {"healthy": 1, "downloading": 2}},
             {"total": 5, "released": False, "counts": {"pending": 5}}]  # fmt: skip
    assert progress(waves) == "0: 1/1, 1: 1/3, 2: -/5"  # waves counted from 0, as the API counts them


def test_tables_wrap_long_ids_instead_of_cutting_them(capsys: pytest.CaptureFixture[str]) -> None:
    from hub.ops_cli import _table

    long_id = "device-" + "x" * 90 + "-end"
    _table("devices", ["id", "profile", "state"], [[long_id, "raspberry_pi_4", "online"]])
    out = capsys.readouterr().out
    assert "…" not in out
    cells = [line.split("│")[1].strip() for line in out.splitlines() if line.count("│") >= 3]
    assert "".join(cells) == long_id  # the first column, read top to bottom, is the whole id


def test_the_documented_bootstrap_order_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`hub init` writes the broker's files, `hub broker-config` a matching mosquitto.conf: a real Mosquitto
    starts on them before the hub ever served, and admits the hub's account."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from hub.mqtt.auth import HUB_USERNAME

    port = free_port()
    for key, value in {"MOSQUITTO_PASSWORD_FILE": tmp_path / "mosq" / "passwd",
                       "MOSQUITTO_ACL_FILE": tmp_path / "mosq" / "acl",
                       "MOSQUITTO_PID_FILE": tmp_path / "mosquitto.pid", "MQTT_PORT": port}.items():  # fmt: skip
        monkeypatch.setenv(f"EDGEFLEET_HUB_{key}", str(value))
    code, out = run("hub", "init", "--data-dir", str(tmp_path / "d"))
    assert code == 0 and f"broker accounts: {tmp_path / 'mosq' / 'passwd'}" in out, out
    code, conf = run("hub", "broker-config", "--data-dir", str(tmp_path / "d"))
    assert code == 0 and f"password_file {tmp_path / 'mosq' / 'passwd'}" in conf
    assert f"listener {port} 127.0.0.1" in conf
    conf_file = tmp_path / "mosquitto.conf"
    conf_file.write_text(conf.replace("persistence true", "persistence false") + "user root\n")
    broker = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(conf_file)], stderr=subprocess.PIPE)
    try:
        password = (tmp_path / "d" / "mqtt_hub_password").read_text().strip()
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="hub-check")
        client.username_pw_set(HUB_USERNAME, password)
        granted: dict[str, Any] = {"rc": None}
        client.on_connect = lambda _c, _u, _f, rc, _p=None: granted.update(rc=rc)
        deadline = time.monotonic() + 10
        while True:
            try:
                assert client.connect("127.0.0.1", port) == 0
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "mosquitto did not start on the written config"
                time.sleep(0.1)
        client.loop_start()
        deadline = time.monotonic() + 5
        while granted["rc"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        client.loop_stop()
        assert granted["rc"] is not None and not granted["rc"].is_failure, granted
    finally:
        broker.terminate()
        broker.wait(10)
