"""deploy/: every metric the Grafana dashboard and Prometheus rules use exists; the Mosquitto config starts."""

from __future__ import annotations

import json
import re
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml

from agent.metrics import AgentMetrics
from edgefleet.brokers import MOSQUITTO, free_port, wait_port
from hub.metrics import HubMetrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC = re.compile(r"\b(edgefleet_[a-z_]+)")


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


def test_mosquitto_config_starts_with_tls_and_auth(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                            serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()))
    (tmp_path / "passwd").write_text("")
    (tmp_path / "acl").write_text("pattern readwrite edgefleet/v1/devices/%u/#\n")
    tls_port, local_port = free_port(), free_port()
    text = (DEPLOY / "mosquitto.conf").read_text()
    for old, new in (("/var/lib/edgefleet-hub/mosquitto/", f"{tmp_path}/"), ("/etc/mosquitto/certs/", f"{tmp_path}/"),
                     ("/run/mosquitto/mosquitto.pid", f"{tmp_path}/m.pid"), ("/var/lib/mosquitto/", f"{tmp_path}/"),
                     ("listener 8883", f"listener {tls_port}"),
                     ("listener 1883 127.0.0.1", f"listener {local_port} 127.0.0.1"),
                     ("log_dest syslog", "log_dest stderr")):
        text = text.replace(old, new)
    text += "user root\n"
    (tmp_path / "mosquitto.conf").write_text(text)
    proc = subprocess.Popen([MOSQUITTO, "-c", str(tmp_path / "mosquitto.conf")], stderr=subprocess.PIPE)
    try:
        wait_port("127.0.0.1", tls_port)
        wait_port("127.0.0.1", local_port)
        time.sleep(0.2)
        assert proc.poll() is None
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
        line.split("=", 1) for line in (DEPLOY / "edgefleet-agent.service").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert agent_unit["ExecStart"].split()[1:4] == ["agent", "run", "--config"]
    default_data_dir = AgentSettings.model_fields["data_dir"].default
    assert Path("/var/lib") / agent_unit["StateDirectory"] == default_data_dir
    assert agent_unit["ReadWritePaths"] == str(default_data_dir)
    assert f"/run/{agent_unit['RuntimeDirectory']}/agent.sock" in (DEPLOY.parent / "docs" / "agent.md").read_text()
    assert set(agent_unit["RestrictAddressFamilies"].split()) >= {"AF_INET", "AF_INET6", "AF_UNIX"}
