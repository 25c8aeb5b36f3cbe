"""deploy/: every metric the Grafana dashboard and Prometheus rules use exists; the Mosquitto config starts."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from agent.metrics import AgentMetrics
from edgefleet.brokers import MOSQUITTO, free_port, wait_port
from hub.metrics import HubMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC = re.compile(r"\b(edgefleet_[a-z_]+)")
# The CONNACK reasons (MQTT 5) of a refused login: Mosquitto 2.0 says the first for both a missing and a wrong password.
REFUSED = ("Not authorized", "Bad user name or password")


def _exported() -> dict[str, set[str]]:
    """Sample names (with _total/_bucket suffixes) -> label names, from the real registries."""
    found: dict[str, set[str]] = {}
    for registry in (HubMetrics().registry, AgentMetrics().registry):
        for family in registry.collect():
            labels = set()
            for sample in family.samples:
                labels |= set(sample.labels)
                found.setdefault(sample.name, set()).update(sample.labels)
            for suffix in ("", "_total", "_bucket", "_count", "_sum"):
                found.setdefault(family.name + suffix, set()).update(labels)
    return found


def test_grafana_and_prometheus_use_real_metrics() -> None:
    exported = _exported()
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text())
    exprs += [r["expr"] for g in rules["groups"] for r in g["rules"]]
    assert exprs
    for expr in exprs:
        for name in METRIC.findall(expr):
            assert name in exported, f"{name} (in {expr!r}) is not exported by the hub or the agent"
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert {j["job_name"] for j in config["scrape_configs"]} == {"edgefleet-hub", "edgefleet-agents"}


def _connack(
    port: int, *, ca: Path | None = None, username: str | None = None, password: str | None = None
) -> str | None:
    """Connect one paho client (MQTT 5; over TLS verified with `ca` when given): the CONNACK's reason, or None
    when the broker closed the connection without one."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    if ca is not None:
        client.tls_set(ca_certs=str(ca))
    if username is not None:
        client.username_pw_set(username, password)
    reasons: list[str] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: reasons.append(str(reason))
    client.connect("127.0.0.1", port)  # the TLS handshake happens here, verifying the broker's certificate
    try:
        deadline, rc = time.monotonic() + 10, MQTTErrorCode.MQTT_ERR_SUCCESS
        while not reasons and rc == MQTTErrorCode.MQTT_ERR_SUCCESS and time.monotonic() < deadline:
            rc = client.loop(0.1)
    finally:
        client.disconnect()
        client.loop(0.1)  # closes the socket (the broker has already closed it after a refusal)
    assert reasons or rc != MQTTErrorCode.MQTT_ERR_SUCCESS, "neither a CONNACK nor a closed connection in 10 s"
    return reasons[0] if reasons else None


def test_mosquitto_config_starts_with_tls_and_auth(tmp_path: Path) -> None:
    """deploy/mosquitto.conf (paths and ports moved into tmp_path) with the hub's own password and ACL files:
    devices get TLS verified against the fleet's CA, and no client gets in without a password the hub wrote,
    on the TLS listener or on the hub's loopback one."""
    import socket
    import ssl

    from hub.mqtt.auth import render_acl, render_passwords
    from hub.security import mosquitto_hash, new_password
    from tests.support.tlsfiles import tls_files

    files = tls_files(tmp_path / "certs")
    password = new_password()
    (tmp_path / "passwd").write_text(render_passwords({"dev-1": mosquitto_hash(password)}))
    (tmp_path / "acl").write_text(render_acl("edgefleet/v1"))
    tls_port, local_port = free_port(), free_port()
    text = (DEPLOY / "mosquitto.conf").read_text()
    for old, new in (("/var/lib/edgefleet-hub/mosquitto/", f"{tmp_path}/"),
                     ("/etc/mosquitto/certs/server.crt", str(files["cert"])),
                     ("/etc/mosquitto/certs/server.key", str(files["key"])),
                     ("/etc/mosquitto/certs/ca.crt", str(files["ca"])),
                     ("/run/mosquitto/mosquitto.pid", f"{tmp_path}/m.pid"), ("/var/lib/mosquitto/", f"{tmp_path}/"),
                     ("listener 8883", f"listener {tls_port}"),
                     ("listener 1883 127.0.0.1", f"listener {local_port} 127.0.0.1"),
                     ("log_dest syslog", "log_dest stderr")):  # fmt: skip
        assert old in text, f"deploy/mosquitto.conf no longer has {old!r}: update this test"
        text = text.replace(old, new)
    text += "user root\n"
    (tmp_path / "mosquitto.conf").write_text(text)
    log = tmp_path / "mosquitto.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(tmp_path / "mosquitto.conf")], stderr=out)
    try:
        wait_port("127.0.0.1", tls_port)
        wait_port("127.0.0.1", local_port)
        assert proc.poll() is None, log.read_text()

        # A real handshake on the device listener: TLS 1.2+, a certificate chain that verifies against the CA.
        trusting = ssl.create_default_context(cafile=str(files["ca"]))
        with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw, \
                trusting.wrap_socket(raw, server_hostname="localhost") as tls:  # fmt: skip
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            peer = tls.getpeercert()
            assert dict(x[0] for x in peer["subject"])["commonName"] == "broker"
            assert dict(x[0] for x in peer["issuer"])["commonName"] == "edgefleet test CA"
        untrusting = ssl.create_default_context(cafile=str(files["other_ca"]))
        with socket.create_connection(("127.0.0.1", tls_port), timeout=5) as raw, \
                pytest.raises(ssl.SSLCertVerificationError, match="CERTIFICATE_VERIFY_FAILED"):  # fmt: skip
            untrusting.wrap_socket(raw, server_hostname="localhost")

        # allow_anonymous false + the password file: only the hub's credentials get a CONNACK that accepts.
        assert _connack(tls_port, ca=files["ca"]) in REFUSED
        assert _connack(tls_port, ca=files["ca"], username="dev-1", password="wrong") in REFUSED
        assert _connack(tls_port, ca=files["ca"], username="dev-1", password=password) == "Success"
        assert _connack(tls_port, username="dev-1", password=password) is None  # no cleartext on the device port
        # The loopback listener is plain MQTT for the hub, and as closed to anonymous clients.
        assert _connack(local_port) in REFUSED
        assert _connack(local_port, username="dev-1", password=password) == "Success"
        assert proc.poll() is None, log.read_text()
    finally:
        proc.terminate()
        proc.wait(10)


def test_systemd_units_verify_and_match_what_the_code_uses(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts both units (ExecStart pointed at an existing binary, the venv is not
    here); the agent unit's directories are the ones the agent's defaults and docs name."""
    from agent.settings import AgentSettings

    analyze = Path("/usr/bin/systemd-analyze")
    assert analyze.exists(), "systemd-analyze missing: run `make setup` (it installs systemd)"
    for unit in ("edgefleet-agent.service", "edgefleet-hub.service"):
        text = (DEPLOY / unit).read_text()
        exec_line = next(line for line in text.splitlines() if line.startswith("ExecStart="))
        binary = exec_line.removeprefix("ExecStart=").split()[0]
        (tmp_path / unit).write_text(text.replace(f"ExecStart={binary}", "ExecStart=/bin/true"))
        res = subprocess.run([str(analyze), "verify", str(tmp_path / unit)], capture_output=True, text=True)
        assert res.returncode == 0 and not res.stderr.strip(), (unit, res.stderr)
    agent_unit = dict(
        line.split("=", 1)
        for line in (DEPLOY / "edgefleet-agent.service").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert agent_unit["ExecStart"].split()[1:4] == ["agent", "run", "--config"]
    default_data_dir = AgentSettings.model_fields["data_dir"].default
    assert Path("/var/lib") / agent_unit["StateDirectory"] == default_data_dir
    assert agent_unit["ReadWritePaths"] == str(default_data_dir)
    assert f"/run/{agent_unit['RuntimeDirectory']}/agent.sock" in (DEPLOY.parent / "docs" / "agent.md").read_text()
    assert set(agent_unit["RestrictAddressFamilies"].split()) >= {"AF_INET", "AF_INET6", "AF_UNIX"}
