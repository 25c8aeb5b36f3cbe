"""Generated Mosquitto password/ACL files on a private broker: devices are confined to their own topics."""

from __future__ import annotations

from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from hub.errors import BrokerConfigError
from hub.mqtt import auth as auth_mod
from hub.mqtt.auth import HUB_USERNAME, MosquittoAuth
from hub.security import mosquitto_hash
from tests.hub.mqttc import Collector
from tests.support.broker import start_broker

PASSWORDS = {"devA": "pw-a-secret", "devB": "pw-b-secret", HUB_USERNAME: "hub-secret"}


@pytest.fixture
def secured(tmp_path: Path, unique_root: str):  # type: ignore[no-untyped-def]
    auth = MosquittoAuth(
        password_file=tmp_path / "auth" / "passwd",
        acl_file=tmp_path / "auth" / "acl",
        pid_file=tmp_path / "mosquitto.pid",
        topic_root=unique_root,
    )
    auth.apply({u: mosquitto_hash(p) for u, p in PASSWORDS.items()})
    broker = start_broker(
        tmp_path / "mosq",
        extra_conf=[f"password_file {auth.password_file}", f"acl_file {auth.acl_file}",
                    f"pid_file {auth.pid_file}"],
    )  # fmt: skip
    yield auth, broker
    broker.stop()


def test_device_a_cannot_read_or_write_device_b(secured, unique_root: str) -> None:  # type: ignore[no-untyped-def]
    _auth, broker = secured
    a = Collector(broker.port, "devA", PASSWORDS["devA"]).wait_connected()
    b = Collector(broker.port, "devB", PASSWORDS["devB"]).wait_connected()
    hub = Collector(broker.port, HUB_USERNAME, PASSWORDS[HUB_USERNAME]).wait_connected()
    try:
        a.subscribe(f"{unique_root}/devices/devB/#")
        a.subscribe(f"{unique_root}/devices/devA/#")
        b.subscribe(f"{unique_root}/devices/devB/#")
        b.publish(f"{unique_root}/devices/devB/reported", b"b-secret-state")
        denied = a.publish(f"{unique_root}/devices/devB/desired", b"forged by A")
        assert denied.rc == mqtt.MQTT_ERR_SUCCESS
        hub.publish(f"{unique_root}/devices/devA/desired", b"for A")
        hub.publish(f"{unique_root}/devices/devB/desired", b"for B")
        assert a.wait_for(lambda m: (f"{unique_root}/devices/devA/desired", b"for A") in m)
        assert b.wait_for(lambda m: (f"{unique_root}/devices/devB/desired", b"for B") in m)
        assert all(not t.startswith(f"{unique_root}/devices/devB/") for t, _ in a.messages)
        assert all(p != b"forged by A" for _, p in b.messages)
        wrong = Collector(broker.port, "devA", "wrong-password")
        assert not wrong.connected.wait(1.5)
        wrong.close()
    finally:
        for c in (a, b, hub):
            c.close()


def test_reload_adds_devices_and_rejects_invalid_candidates(secured, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    auth, broker = secured
    hashes = {u: mosquitto_hash(p) for u, p in PASSWORDS.items()}
    auth.apply({**hashes, "devC": mosquitto_hash("pw-c-secret")})
    c = Collector(broker.port, "devC", "pw-c-secret").wait_connected()
    c.close()
    before = auth.acl_file.read_text(), auth.password_file.read_text()
    with pytest.raises(BrokerConfigError):
        auth.apply({**hashes, "bad:user": "x"})
    monkeypatch.setattr(auth_mod, "render_acl", lambda _root: "this is not an acl line\n")
    with pytest.raises(BrokerConfigError, match="refused"):
        auth.apply(hashes)
    assert (auth.acl_file.read_text(), auth.password_file.read_text()) == before
    assert not list(auth.acl_file.parent.glob(".*candidate*"))
    assert broker.proc is not None and broker.proc.poll() is None


def test_a_stale_pid_file_is_one_warning_and_the_accounts_are_still_written(
    tmp_path: Path, unique_root: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A pid file a stopped broker left behind: the hub writes the accounts (a broker started later reads them)
    and says so once, instead of failing its start with a traceback."""
    import subprocess

    pid_file = tmp_path / "mosquitto.pid"
    child = subprocess.Popen(["true"])  # not os.fork(): the test process runs threads (JAX's, among others)
    child.wait()
    dead = child.pid  # a pid that no process has now
    pid_file.write_text(f"{dead}\n")
    auth = MosquittoAuth(password_file=tmp_path / "auth" / "passwd", acl_file=tmp_path / "auth" / "acl",
                         pid_file=pid_file, topic_root=unique_root)  # fmt: skip
    with caplog.at_level("WARNING", logger="hub.mqtt.auth"):
        auth.apply({u: mosquitto_hash(p) for u, p in PASSWORDS.items()})
        auth.apply({u: mosquitto_hash(p) for u, p in PASSWORDS.items()})
    stale = [r.getMessage() for r in caplog.records if "the broker is not running" in r.getMessage()]
    assert len(stale) == 1 and f"'{dead}'" in stale[0] and "no process has that pid" in stale[0]
    assert "devA:" in (tmp_path / "auth" / "passwd").read_text()
    broker = start_broker(tmp_path / "mosq", extra_conf=[f"password_file {auth.password_file}",
                                                         f"acl_file {auth.acl_file}"])  # fmt: skip
    try:  # the broker started afterwards reads what was written
        a = Collector(broker.port, "devA", PASSWORDS["devA"]).wait_connected()
        a.close()
    finally:
        broker.stop()
