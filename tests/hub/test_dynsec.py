"""Broker accounts in Mosquitto's dynamic-security plugin (a real broker with the plugin, the real hub API).

Most tests hand an in-process hub (built before its broker) a DynsecAccounts, as services.py does for
`broker_auth = "dynsec"`; the last one runs `edgefleet hub serve` with EDGEFLEET_HUB_BROKER_AUTH=dynsec.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from hub.api.main import create_app
from hub.errors import Conflict
from hub.mqtt.auth import HUB_USERNAME
from hub.mqtt.dynsec import CONTROL_TOPIC, DynsecAccounts, DynsecError, hub_acls, initial_config
from hub.security import mosquitto_hash
from hub.services import Hub
from hub.settings import HubSettings
from protocol.http import ENROLL_PATH, EnrollResponse
from tests.hub.mqttc import Collector
from tests.support.broker import MOSQUITTO, Broker, free_port, start_broker, wait_port
from tests.support.tlsfiles import tls_files

pytestmark = pytest.mark.integration

PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
DEPLOY_CONF = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto-dynsec.conf"
ADMIN = {"Authorization": "Bearer admin-secret-token"}
NOT_AUTHORIZED = 135


def dynsec_broker(workdir: Path, config: dict[str, Any] | None = None) -> Broker:
    """Mosquitto with the plugin; `config` is its first dynsec file (else `mosquitto_ctrl dynsec init` made it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "dynsec.json"
    if config is not None:
        path.write_text(json.dumps(config))
    return start_broker(workdir / "mosq", extra_conf=[f"plugin {PLUGIN}", f"plugin_opt_config_file {path}"],
                        persistence=False)  # fmt: skip


@dataclass
class Fleet:
    client: TestClient
    hub: Hub
    broker: Broker
    accounts: DynsecAccounts
    root: str

    def enroll(self, device_id: str) -> EnrollResponse:
        token = self.client.post("/api/v1/enrollment-tokens", json={"uses": 1}, headers=ADMIN).json()["token"]
        r = self.client.post(ENROLL_PATH, json={"enrollment_token": token, "profile": "raspberry_pi_4",
                                                "device_id": device_id})  # fmt: skip
        assert r.status_code == 201, r.text
        return EnrollResponse.model_validate(r.json())

    def accounts_with(self, **changes: Any) -> DynsecAccounts:
        """Another DynsecAccounts on this broker (another replica, or a wrong password)."""
        args: dict[str, Any] = {"host": "127.0.0.1", "port": self.broker.port, "password": self.hub.mqtt_password,
                                "topic_root": self.root, **changes}  # fmt: skip
        return DynsecAccounts(**args)


@pytest.fixture
def fleet(tmp_path: Path, unique_root: str) -> Iterator[Fleet]:
    settings = HubSettings(data_dir=tmp_path / "data", admin_token="admin-secret-token", mqtt_enabled=False,
                           topic_root=unique_root)  # fmt: skip
    with TestClient(create_app(settings, background=False)) as client:
        hub: Hub = client.app.state.hub  # type: ignore[attr-defined]
        config = initial_config(hub_password_hash=mosquitto_hash(hub.mqtt_password), topic_root=unique_root)
        broker = dynsec_broker(tmp_path / "broker", config)
        accounts = DynsecAccounts(host="127.0.0.1", port=broker.port, password=hub.mqtt_password,
                                  topic_root=unique_root)  # fmt: skip
        hub.dynsec = accounts  # what services.py does for broker_auth="dynsec"
        try:
            yield Fleet(client, hub, broker, accounts, unique_root)
        finally:
            accounts.close()
            broker.stop()


def suback(c: Collector, topic: str) -> ReasonCode:
    got: list[ReasonCode] = []
    done = threading.Event()
    c.client.on_subscribe = lambda _c, _u, _m, codes, _p: (got.extend(codes), done.set())
    c.client.subscribe(topic, qos=1)
    assert done.wait(5), f"no SUBACK for {topic}"
    return got[0]


def puback(c: Collector, topic: str, payload: bytes, retain: bool = False) -> ReasonCode:
    got: list[ReasonCode] = []
    done = threading.Event()
    c.client.on_publish = lambda _c, _u, _m, code, _p: (got.append(code), done.set())
    c.client.publish(topic, payload, qos=1, retain=retain)
    assert done.wait(5), f"no PUBACK for {topic}"
    return got[0]


def login_refused(port: int, username: str, password: str) -> bool:
    c = Collector(port, username, password)
    try:
        return not c.connected.wait(1.5) and c.connect_reason is not None and c.connect_reason.is_failure
    finally:
        c.close()


def test_enrolled_device_logs_in_at_once_and_cannot_touch_another(fleet: Fleet) -> None:
    root, port = fleet.root, fleet.broker.port
    started = time.perf_counter()
    creds_a = fleet.enroll("devA")
    enrolled = time.perf_counter()
    a = Collector(port, "devA", creds_a.mqtt.password, client_id="devA").wait_connected(5)
    logged_in = time.perf_counter()
    b = Collector(port, "devB", fleet.enroll("devB").mqtt.password, client_id="devB").wait_connected(5)
    warm = time.perf_counter() - logged_in  # the hub's admin connection is up now
    print(json.dumps({"enroll_request_s": round(enrolled - started, 4),  # noqa: T201 (the issue's figure: pytest -s)
                      "enroll_to_broker_login_s": round(logged_in - started, 4),
                      "enroll_to_broker_login_s_warm": round(warm, 4)}))  # fmt: skip
    hub = Collector(port, HUB_USERNAME, fleet.hub.mqtt_password).wait_connected(5)
    try:
        assert suback(a, f"{root}/devices/devA/#").value == 1
        assert suback(b, f"{root}/devices/devB/#").value == 1
        for foreign in (f"{root}/devices/devB/#", f"{root}/devices/+/desired", f"{root}/#", "#",
                        f"$share/g/{root}/devices/devB/#", "$CONTROL/dynamic-security/#"):  # fmt: skip
            assert suback(a, foreign).value == NOT_AUTHORIZED, foreign
        assert not puback(a, f"{root}/devices/devA/reported", b"a-state").is_failure
        assert puback(a, f"{root}/devices/devB/desired", b"forged by A").value == NOT_AUTHORIZED
        assert puback(a, f"{root}/other", b"x").value == NOT_AUTHORIZED
        forged = {"commands": [{"command": "createClient", "username": "evil", "password": "x"}]}
        assert puback(a, CONTROL_TOPIC, json.dumps(forged).encode()).value == NOT_AUTHORIZED
        # The hub account does what it does today: the whole tree, shared subscriptions for ingest.
        assert suback(hub, f"{root}/devices/+/reported").value == 1
        assert suback(hub, f"$share/edgefleet-hub/{root}/devices/+/telemetry").value == 1
        assert suback(hub, "other/#").value == NOT_AUTHORIZED
        assert not puback(hub, f"{root}/devices/devA/desired", b"for A", retain=True).is_failure
        assert not puback(hub, f"{root}/devices/devB/desired", b"for B", retain=True).is_failure
        assert not puback(a, f"{root}/devices/devA/telemetry", b"a-telemetry").is_failure
        assert not puback(a, f"{root}/devices/devA/reported", b"a-state-2").is_failure
        assert a.wait_for(lambda m: (f"{root}/devices/devA/desired", b"for A") in m)
        assert b.wait_for(lambda m: (f"{root}/devices/devB/desired", b"for B") in m)
        assert hub.wait_for(lambda m: {(f"{root}/devices/devA/reported", b"a-state-2"),
                                       (f"{root}/devices/devA/telemetry", b"a-telemetry")} <= set(m))  # fmt: skip
        assert all(not t.startswith(f"{root}/devices/devB/") for t, _ in a.messages)
        assert all(p != b"forged by A" for _, p in b.messages)
        assert fleet.accounts.list_devices() == ["devA", "devB"]
    finally:
        for c in (a, b, hub):
            c.close()


def test_decommission_revokes_the_login_at_once(fleet: Fleet) -> None:
    port = fleet.broker.port
    creds_a, creds_b = fleet.enroll("devA"), fleet.enroll("devB")
    a = Collector(port, "devA", creds_a.mqtt.password, client_id="devA").wait_connected(5)
    b = Collector(port, "devB", creds_b.mqtt.password, client_id="devB").wait_connected(5)
    dropped = threading.Event()
    a.client.on_disconnect = lambda *_a: dropped.set()
    try:
        started = time.perf_counter()
        assert fleet.client.delete("/api/v1/devices/devA", headers=ADMIN).status_code == 204
        assert dropped.wait(2), "the broker kept the decommissioned device connected"
        print(json.dumps({"decommission_to_disconnect_s": round(time.perf_counter() - started, 4)}))  # noqa: T201
        a.close()
        assert login_refused(port, "devA", creds_a.mqtt.password)
        assert b.client.is_connected()
        assert not puback(b, f"{fleet.root}/devices/devB/reported", b"still here").is_failure
        assert fleet.accounts.list_devices() == ["devB"]
    finally:
        a.close()
        b.close()


def test_a_refusing_broker_leaves_enrollment_and_decommission_undone(fleet: Fleet) -> None:
    good = fleet.accounts
    token = fleet.client.post("/api/v1/enrollment-tokens", json={"uses": 1}, headers=ADMIN).json()["token"]
    body = {"enrollment_token": token, "profile": "raspberry_pi_4", "device_id": "devA"}
    wrong = fleet.accounts_with(password="not-the-hub-password", timeout_s=2)
    fleet.hub.dynsec = wrong
    try:
        r = fleet.client.post(ENROLL_PATH, json=body)
        assert r.status_code == 503
        assert r.json()["detail"] == f"the broker at 127.0.0.1:{fleet.broker.port} refused 'edgefleet-hub''s login: " \
                                     "Not authorized"  # fmt: skip
        assert fleet.client.get("/api/v1/devices/devA", headers=ADMIN).status_code == 404
        assert good.list_devices() == []
        fleet.hub.dynsec = good
        r = fleet.client.post(ENROLL_PATH, json=body)  # the same single-use token: it was not used up
        assert r.status_code == 201, r.text
        password = r.json()["mqtt"]["password"]
        fleet.hub.dynsec = wrong
        assert fleet.client.delete("/api/v1/devices/devA", headers=ADMIN).status_code == 503
        assert fleet.client.get("/api/v1/devices/devA", headers=ADMIN).status_code == 200
        Collector(fleet.broker.port, "devA", password).wait_connected(5).close()
    finally:
        fleet.hub.dynsec = good
        wrong.close()


def test_accounts_without_admin_rights_or_broker_give_one_clear_error(fleet: Fleet) -> None:
    creds = fleet.enroll("devA")
    as_device = fleet.accounts_with(username="devA", password=creds.mqtt.password, timeout_s=2)
    nobody = DynsecAccounts(host="127.0.0.1", port=free_port(), password="x", topic_root=fleet.root, timeout_s=1)
    try:
        with pytest.raises(DynsecError, match=r"'devA' may not subscribe to .*Not authorized"):
            as_device.add_device("devZ", "pw")
        with pytest.raises(DynsecError, match="cannot reach the broker"):
            nobody.remove_device("devA")
        assert fleet.accounts.list_devices() == ["devA"]
        # Rights fixed on the broker later (modifyRole disconnects nobody): the next request asks again.
        grant = {"commands": [{"command": "modifyRole", "rolename": "edgefleet-device-devA",
                               "acls": hub_acls(fleet.root)}]}  # fmt: skip
        operator = Collector(fleet.broker.port, HUB_USERNAME, fleet.hub.mqtt_password).wait_connected(5)
        assert not puback(operator, CONTROL_TOPIC, json.dumps(grant).encode()).is_failure
        operator.close()
        assert as_device.list_devices() == ["devA"]
    finally:
        as_device.close()
        nobody.close()


def test_add_is_idempotent_and_foreign_accounts_are_left_alone(tmp_path: Path, unique_root: str) -> None:
    hub_hash = mosquitto_hash("hub-pw")
    config = initial_config(hub_password_hash=hub_hash, topic_root=unique_root,
                            device_hashes={"legacy-1": mosquitto_hash("old-pw")})  # fmt: skip
    config["clients"].append({**config["clients"][0], "username": "operator"})  # a person's admin account
    broker = dynsec_broker(tmp_path, config)
    accounts = DynsecAccounts(host="127.0.0.1", port=broker.port, password="hub-pw", topic_root=unique_root)
    try:
        # Moving from the files backend: a device keeps the password whose hash the hub stored.
        legacy = Collector(broker.port, "legacy-1", "old-pw").wait_connected(5)
        assert suback(legacy, f"{unique_root}/devices/legacy-1/#").value == 1
        assert suback(legacy, f"{unique_root}/devices/devA/#").value == NOT_AUTHORIZED
        legacy.close()
        accounts.add_device("devA", "one")
        first = Collector(broker.port, "devA", "one").wait_connected(5)
        dropped = threading.Event()
        first.client.on_disconnect = lambda *_a: dropped.set()
        accounts.add_device("devA", "two")  # re-keyed: the old password's session is dropped
        assert dropped.wait(2)
        first.close()
        assert login_refused(broker.port, "devA", "one")
        Collector(broker.port, "devA", "two").wait_connected(5).close()
        with pytest.raises(Conflict):
            accounts.add_device("operator", "taken-over")
        with pytest.raises(Conflict):
            accounts.remove_device("operator")
        Collector(broker.port, "operator", "hub-pw").wait_connected(5).close()
        accounts.remove_device("ghost")  # never existed: nothing to do
        assert accounts.list_devices() == ["devA", "legacy-1"]
    finally:
        accounts.close()
        broker.stop()


def test_replicas_share_the_response_topic(tmp_path: Path, unique_root: str) -> None:
    """Two hubs administer one broker at once: every answer reaches the request that asked."""
    broker = dynsec_broker(tmp_path, initial_config(hub_password_hash=mosquitto_hash("hub-pw"),
                                                    topic_root=unique_root))  # fmt: skip
    replicas = [DynsecAccounts(host="127.0.0.1", port=broker.port, password="hub-pw", topic_root=unique_root)
                for _ in range(2)]  # fmt: skip
    ids = [f"dev-{i:02d}" for i in range(24)]
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: replicas[i % 2].add_device(ids[i], f"pw-{i}"), range(len(ids))))
        assert replicas[0].list_devices() == ids
        Collector(broker.port, ids[3], "pw-3").wait_connected(5).close()
        with ThreadPoolExecutor(8) as pool:  # removed through the other replica
            list(pool.map(lambda i: replicas[(i + 1) % 2].remove_device(ids[i]), range(len(ids))))
        assert replicas[1].list_devices() == []
        assert login_refused(broker.port, ids[3], "pw-3")
    finally:
        for r in replicas:
            r.close()
        broker.stop()


def test_hub_role_is_added_to_a_broker_set_up_with_mosquitto_ctrl(tmp_path: Path, unique_root: str) -> None:
    """`mosquitto_ctrl dynsec init` gives the hub only the plugin's admin role; the hub adds its own once."""
    tmp_path.mkdir(exist_ok=True)
    subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(tmp_path / "dynsec.json"), HUB_USERNAME, "hub-pw"],
                   check=True, capture_output=True)  # fmt: skip
    broker = dynsec_broker(tmp_path)
    accounts = DynsecAccounts(host="127.0.0.1", port=broker.port, password="hub-pw", topic_root=unique_root)
    desired = f"{unique_root}/devices/devA/desired"
    try:
        before = Collector(broker.port, HUB_USERNAME, "hub-pw").wait_connected(5)
        assert puback(before, desired, b"x").value == NOT_AUTHORIZED
        before.close()
        accounts.ensure_hub_roles()
        hub = Collector(broker.port, HUB_USERNAME, "hub-pw").wait_connected(5)
        assert not puback(hub, desired, b"x").is_failure
        assert suback(hub, f"$share/edgefleet-hub/{unique_root}/devices/+/telemetry").value == 1
        kicked = threading.Event()
        hub.client.on_disconnect = lambda *_a: kicked.set()
        accounts.ensure_hub_roles()  # in place: nothing changes, nobody is disconnected
        assert not kicked.wait(1)
        accounts.add_device("devA", "pw-a")
        Collector(broker.port, "devA", "pw-a").wait_connected(5).close()
        hub.close()
    finally:
        accounts.close()
        broker.stop()


def tls_connack(port: int, ca: Path, username: str, password: str) -> str | None:
    """The CONNACK reason a device gets on the TLS listener, or None without one."""
    got: list[str] = []
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.tls_set_context(ssl.create_default_context(cafile=str(ca)))
    c.username_pw_set(username, password)
    c.on_connect = lambda _c, _u, _f, reason, _p: (got.append(str(reason)), done.set())
    try:
        c.connect("127.0.0.1", port, keepalive=10)
        c.loop_start()
        done.wait(5)
    finally:
        c.disconnect()
        c.loop_stop()
    return got[0] if got else None


def test_deploy_config_serves_devices_over_tls_with_accounts_from_the_hub(tmp_path: Path, unique_root: str) -> None:
    """deploy/mosquitto-dynsec.conf (paths and ports moved into tmp_path), set up as its header says."""
    files = tls_files(tmp_path / "certs")
    tls_port, local_port = free_port(), free_port()
    subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(tmp_path / "dynsec.json"), HUB_USERNAME, "hub-pw"],
                   check=True, capture_output=True)  # fmt: skip
    text = DEPLOY_CONF.read_text()
    for old, new in (("/var/lib/mosquitto/dynsec.json", str(tmp_path / "dynsec.json")),
                     ("/etc/mosquitto/certs/server.crt", str(files["cert"])),
                     ("/etc/mosquitto/certs/server.key", str(files["key"])),
                     ("/etc/mosquitto/certs/ca.crt", str(files["ca"])), ("/var/lib/mosquitto/", f"{tmp_path}/"),
                     ("listener 8883", f"listener {tls_port}"),
                     ("listener 1883 127.0.0.1", f"listener {local_port} 127.0.0.1"),
                     ("log_dest syslog", "log_dest stderr")):  # fmt: skip
        assert old in text, f"deploy/mosquitto-dynsec.conf no longer has {old!r}: update this test"
        text = text.replace(old, new)
    (tmp_path / "mosquitto.conf").write_text(text + "user root\n")
    with (tmp_path / "mosquitto.log").open("wb") as log:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(tmp_path / "mosquitto.conf")], stderr=log)
    accounts = DynsecAccounts(host="127.0.0.1", port=local_port, password="hub-pw", topic_root=unique_root)
    try:
        wait_port("127.0.0.1", tls_port)
        wait_port("127.0.0.1", local_port)
        accounts.ensure_hub_roles()
        accounts.add_device("dev-1", "pw-1")
        assert tls_connack(tls_port, files["ca"], "dev-1", "pw-1") == "Success"
        assert tls_connack(tls_port, files["ca"], "dev-1", "wrong") in ("Not authorized", "Bad user name or password")
        accounts.remove_device("dev-1")
        assert tls_connack(tls_port, files["ca"], "dev-1", "pw-1") in ("Not authorized", "Bad user name or password")
        assert proc.poll() is None, (tmp_path / "mosquitto.log").read_text()
    finally:
        accounts.close()
        proc.terminate()
        proc.wait(10)


def test_hub_serve_with_broker_auth_dynsec(tmp_path: Path, unique_root: str) -> None:
    """`edgefleet hub serve` with EDGEFLEET_HUB_BROKER_AUTH=dynsec: the bridge logs in with its dynsec
    account, a device enrolled over HTTP logs in to the broker at once, decommissioning revokes it."""
    import os
    import sys

    import httpx

    from hub.services import init_data_dir

    data = tmp_path / "data"
    init_data_dir(HubSettings(data_dir=data))
    hub_pw = (data / "mqtt_hub_password").read_text().strip()
    broker = dynsec_broker(tmp_path / "broker", initial_config(hub_password_hash=mosquitto_hash(hub_pw),
                                                               topic_root=unique_root))  # fmt: skip
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "EDGEFLEET_HUB_DATA_DIR": str(data), "EDGEFLEET_HUB_ADMIN_TOKEN": "admin-secret-token",
           "EDGEFLEET_HUB_BROKER_AUTH": "dynsec", "EDGEFLEET_HUB_MQTT_PORT": str(broker.port),
           "EDGEFLEET_HUB_TOPIC_ROOT": unique_root, "EDGEFLEET_HUB_PUBLIC_URL": url}  # fmt: skip
    log = tmp_path / "hub.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "edgefleet", "hub", "serve", "--port", str(port)], env=env,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=1).json().get("mqtt_connected"):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        token = httpx.post(f"{url}/api/v1/enrollment-tokens", json={"uses": 1}, headers=ADMIN).json()["token"]
        r = httpx.post(f"{url}{ENROLL_PATH}", json={"enrollment_token": token, "profile": "raspberry_pi_4",
                                                   "device_id": "cam-1"})  # fmt: skip
        assert r.status_code == 201, r.text
        creds = EnrollResponse.model_validate(r.json()).mqtt
        assert not login_refused(broker.port, creds.username, creds.password)
        assert httpx.delete(f"{url}/api/v1/devices/cam-1", headers=ADMIN).status_code == 204
        assert login_refused(broker.port, creds.username, creds.password)
    finally:
        proc.terminate()
        proc.wait(15)
        broker.stop()
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def test_dynsec_config_moves_an_enrolled_fleet_without_re_enrolling(tmp_path: Path, unique_root: str) -> None:
    """`edgefleet hub dynsec-config FILE` from a hub on the files backend: a broker started on that file lets the
    enrolled device in with the password it already has (and the hub's account), and nobody else; the file is
    0600 and is not overwritten without --force."""
    from click.testing import CliRunner

    from hub.cli import hub as hub_cli

    data = tmp_path / "data"
    settings = HubSettings(data_dir=data, admin_token="admin-secret-token", mqtt_enabled=False, topic_root=unique_root)
    with TestClient(create_app(settings, background=False)) as client:
        token = client.post("/api/v1/enrollment-tokens", json={"uses": 1}, headers=ADMIN).json()["token"]
        r = client.post(ENROLL_PATH, json={"enrollment_token": token, "profile": "raspberry_pi_4",
                                           "device_id": "cam-1"})  # fmt: skip
        assert r.status_code == 201, r.text
        creds = EnrollResponse.model_validate(r.json()).mqtt
    out = tmp_path / "dynsec.json"
    env = {"EDGEFLEET_HUB_TOPIC_ROOT": unique_root}
    result = CliRunner().invoke(hub_cli, ["dynsec-config", str(out), "--data-dir", str(data)], env=env)
    assert result.exit_code == 0, result.output
    assert "1 devices" in result.output and out.stat().st_mode & 0o777 == 0o600
    again = CliRunner().invoke(hub_cli, ["dynsec-config", str(out), "--data-dir", str(data)], env=env)
    assert again.exit_code == 1 and "without --force" in again.output
    broker = start_broker(tmp_path / "broker" / "mosq", extra_conf=[f"plugin {PLUGIN}",  # on the file written
                                                                     f"plugin_opt_config_file {out}"],
                          persistence=False)  # fmt: skip
    try:
        assert not login_refused(broker.port, creds.username, creds.password)
        assert login_refused(broker.port, creds.username, "not-the-password")
        assert not login_refused(broker.port, HUB_USERNAME, (data / "mqtt_hub_password").read_text().strip())
    finally:
        broker.stop()
