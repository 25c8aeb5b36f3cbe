"""TLS end to end, against real processes: `edgefleet hub serve --tls-cert/--tls-key [--tls-client-ca
--require-client-cert]` as a subprocess, the agent's own enrollment and download code, a real Mosquitto with TLS
listeners. A device refuses an expired certificate, one from a CA it does not trust and one for another host
name, each with one line that says which; it refuses plain HTTP unless told that is meant; it shows its own
certificate where the hub or the broker asks for one."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.enroll import ensure_identity, save_identity
from agent.errors import ConfigError, EnrollmentError
from agent.settings import AgentSettings, load_settings
from protocol.http import EnrollResponse, MqttCredentials
from tests.support.broker import free_port, start_broker
from tests.support.tls import KeyPair, Pki, make_pki

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXPIRED = "certificate verify failed: certificate has expired (CERTIFICATE_VERIFY_FAILED)"
UNTRUSTED = "certificate verify failed: unable to get local issuer certificate; the {peer}'s certificate is not signed"
WRONG_HOST = "certificate verify failed: IP address mismatch, certificate is not valid for '127.0.0.1'"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def hub_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initialised hub data dir; each test serves it with the certificate it needs (one hub at a time)."""
    data = tmp_path_factory.mktemp("hub") / "data"
    subprocess.run([sys.executable, "-m", "edgefleet", "hub", "init", "--data-dir", str(data)], check=True,
                   capture_output=True, env=_env("EDGEFLEET_HUB_"), timeout=120)  # fmt: skip
    return data


def _env(drop: str) -> dict[str, str]:
    """This environment without variables starting with `drop` (the test says everything itself)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


@dataclass
class ServedHub:
    url: str
    data_dir: Path
    operator: ssl.SSLContext  # the test's own (operator) side: it does not verify, and shows a device certificate

    def enrollment_token(self) -> str:
        admin = (self.data_dir / "admin_token").read_text().strip()
        r = httpx.post(f"{self.url}/api/v1/enrollment-tokens", json={"uses": 5},
                       headers={"Authorization": f"Bearer {admin}"}, verify=self.operator, timeout=30)  # fmt: skip
        assert r.status_code == 201, r.text
        token: str = r.json()["token"]
        return token


@contextlib.contextmanager
def serve_hub(data_dir: Path, log: Path, pki: Pki, tls: KeyPair | None, *extra: str,
              public_url: bool = True) -> Iterator[ServedHub]:  # fmt: skip
    """`edgefleet hub serve` (MQTT off) on a free port, with `tls` as its certificate (None: plain HTTP);
    `public_url=False` leaves EDGEFLEET_HUB_PUBLIC_URL unset (the hub's default)."""
    port = free_port()
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "edgefleet", "hub", "serve", "--data-dir", str(data_dir), "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip
    if tls is not None:
        cmd += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key), *extra]
    env = {**_env("EDGEFLEET_HUB_"), "EDGEFLEET_HUB_MQTT_ENABLED": "false", "EDGEFLEET_HUB_PUBLIC_URL": url}
    if not public_url:
        del env["EDGEFLEET_HUB_PUBLIC_URL"]
    operator = ssl.create_default_context()
    operator.check_hostname, operator.verify_mode = False, ssl.CERT_NONE
    operator.load_cert_chain(pki.client.cert, pki.client.key)
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/healthz", verify=operator, timeout=2).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield ServedHub(url, data_dir, operator)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


def device(folder: Path, hub: ServedHub, **settings: Any) -> AgentSettings:
    """Agent settings enrolling with `hub` (the real ones: the TLS choices are the test's)."""
    values: dict[str, Any] = {"profile": "x86_gateway", "data_dir": folder, "hub_url": hub.url,
                              "enrollment_token": hub.enrollment_token(), "connect_timeout_s": 5.0,
                              "read_timeout_s": 10.0, **settings}  # fmt: skip
    return AgentSettings(**values)


def refused(settings: AgentSettings) -> str:
    """The one line enrollment fails with (and nothing kept on disk)."""
    with pytest.raises(EnrollmentError) as caught:
        ensure_identity(settings)
    line = str(caught.value)
    assert "\n" not in line and "_ssl.c" not in line, line
    assert not (settings.data_dir / "identity.json").exists()
    return line


# ---- the hub's HTTPS -------------------------------------------------------------------------------------
def test_good_certificate_enrolls_and_another_ca_is_refused(tmp_path: Path, pki: Pki, hub_data: Path) -> None:
    """(a) the hub's certificate from the CA in hub_ca_file: enrollment over HTTPS works and the identity names
    the https:// hub (the public_url a hub serving TLS hands out by default); (c) the same hub checked against
    another CA, or the system's CAs, is refused."""
    with serve_hub(hub_data, tmp_path / "hub.log", pki, pki.server, public_url=False) as hub:
        identity = ensure_identity(device(tmp_path / "good", hub, hub_ca_file=pki.ca))
        assert identity.hub_url == hub.url and hub.url.startswith("https://")
        assert (tmp_path / "good" / "identity.json").exists()

        line = refused(device(tmp_path / "other-ca", hub, hub_ca_file=pki.other_ca))
        assert line.startswith(f"cannot reach the hub at {hub.url}: {UNTRUSTED.format(peer='hub')}"), line
        assert f"by the CA in hub_ca_file ({pki.other_ca})" in line and line.endswith("(CERTIFICATE_VERIFY_FAILED)")

        line = refused(device(tmp_path / "system-cas", hub))
        assert "not signed by the system's CAs (set hub_ca_file)" in line, line


def test_expired_certificate_is_refused(tmp_path: Path, pki: Pki, hub_data: Path) -> None:
    """(b) a certificate from the trusted CA that has expired."""
    with serve_hub(hub_data, tmp_path / "hub.log", pki, pki.expired) as hub:
        line = refused(device(tmp_path / "device", hub, hub_ca_file=pki.ca))
    assert line == f"cannot reach the hub at {hub.url}: {EXPIRED}"


def test_certificate_for_another_host_is_refused(tmp_path: Path, pki: Pki, hub_data: Path) -> None:
    """(d) a certificate from the trusted CA, issued for other.example only."""
    with serve_hub(hub_data, tmp_path / "hub.log", pki, pki.wrong_host) as hub:
        line = refused(device(tmp_path / "device", hub, hub_ca_file=pki.ca))
    assert line == f"cannot reach the hub at {hub.url}: {WRONG_HOST} (CERTIFICATE_VERIFY_FAILED)"


def test_plain_http_only_when_meant(tmp_path: Path, pki: Pki, hub_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    """(e) an http:// hub_url stops `edgefleet agent run` with one line naming hub_url and allow_insecure_http;
    with allow_insecure_http = true enrollment works and says once that the traffic is not encrypted."""
    with serve_hub(hub_data, tmp_path / "hub.log", pki, None) as hub:
        token = hub.enrollment_token()
        config = tmp_path / "agent.toml"
        config.write_text(f'profile = "x86_gateway"\ndata_dir = "{tmp_path / "device"}"\nhub_url = "{hub.url}"\n'
                          f'enrollment_token = "{token}"\napi_enabled = false\n')  # fmt: skip
        with pytest.raises(ConfigError) as caught:
            load_settings(config, environ={})
        expected = (f'{config}: hub_url = "{hub.url}" is plain HTTP: the device token and the updates would cross '
                    "the network unencrypted; use https:// or set allow_insecure_http = true to mean it")  # fmt: skip
        assert str(caught.value) == expected

        run = subprocess.run([sys.executable, "-m", "edgefleet", "agent", "run", "--config", str(config)],
                             capture_output=True, text=True, timeout=60, env=_env("EDGEFLEET_AGENT_"))  # fmt: skip
        assert run.returncode != 0
        assert run.stderr.strip() == f"Error: {expected}", run.stderr
        assert not (tmp_path / "device").exists()

        with config.open("a") as f:
            f.write("allow_insecure_http = true\n")
        settings = load_settings(config, environ={})
        with caplog.at_level(logging.INFO, logger="agent"):
            identity = ensure_identity(settings)
            ensure_identity(settings)  # a later start: the identity on disk, the same one warning
        assert identity.hub_url == hub.url
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"traffic to the hub at {hub.url} is not encrypted (allow_insecure_http = true): the "
                        "device token and the updates can be read and changed on the network"] * 2  # fmt: skip


def test_an_http_hub_in_the_identity_is_refused_too(tmp_path: Path) -> None:
    """The hub_url enrollment returned (the hub's public_url) obeys the same rule as the configured one."""
    settings = AgentSettings(profile="x86_gateway", data_dir=tmp_path)
    save_identity(settings, EnrollResponse(device_id="d1", device_token="t" * 16, hub_url="http://hub.example:8080",
                                           mqtt=MqttCredentials(host="h", port=1883, username="u", password="p"),
                                           tuf_root="{}"))  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        ensure_identity(settings)
    assert str(caught.value) == (
        f'{tmp_path / "identity.json"} (from enrollment, the hub\'s public_url): hub_url = "http://hub.example:8080" '
        "is plain HTTP: the device token and the updates would cross the network unencrypted; use https:// or set "
        "allow_insecure_http = true to mean it"
    )
    assert ensure_identity(settings.model_copy(update={"allow_insecure_http": True})).device_id == "d1"


def test_mutual_tls(tmp_path: Path, pki: Pki, hub_data: Path) -> None:
    """(f) a hub that requires client certificates from its CA: a device without one, or with one from another
    CA, is refused in one line; with client_cert_file / client_key_file from that CA it enrolls, and its update
    downloads (TUF over the same HTTPS client) show the certificate too."""
    from agent.serving import ServingRegistry
    from agent.steps import DeviceSteps
    from agent.store import ModelStore
    from firmware_profiles import get_profile

    mtls = ("--tls-client-ca", str(pki.ca), "--require-client-cert")
    with serve_hub(hub_data, tmp_path / "hub.log", pki, pki.server, *mtls) as hub:
        line = refused(device(tmp_path / "no-cert", hub, hub_ca_file=pki.ca))
        assert line == (f"cannot reach the hub at {hub.url}: the hub closed the connection without answering: it may "
                        "require a client certificate (set client_cert_file and client_key_file)")  # fmt: skip
        line = refused(device(tmp_path / "other-cert", hub, hub_ca_file=pki.ca, client_cert_file=pki.other_client.cert,
                              client_key_file=pki.other_client.key))  # fmt: skip
        assert line == (f"cannot reach the hub at {hub.url}: the hub closed the connection without answering: it may "
                        "not accept this device's client certificate (client_cert_file)")  # fmt: skip

        settings = device(tmp_path / "device", hub, hub_ca_file=pki.ca, client_cert_file=pki.client.cert,
                          client_key_file=pki.client.key)  # fmt: skip
        identity = ensure_identity(settings)
        assert identity.hub_url == hub.url
        steps = DeviceSteps(settings, get_profile("x86_gateway"), identity, ModelStore(tmp_path / "models"),
                            ServingRegistry())  # fmt: skip
        try:
            steps.tuf().refresh()  # timestamp -> snapshot -> targets, through the device's mTLS client
        finally:
            steps.close()
        assert (tmp_path / "device" / "tuf" / "timestamp.json").exists()


def test_client_certificate_settings_are_checked_at_start(tmp_path: Path, pki: Pki) -> None:
    """Half a pair, or a key that is not the certificate's, stops the start with one line naming both keys."""
    config = tmp_path / "agent.toml"
    base = f'profile = "x86_gateway"\ndata_dir = "{tmp_path}"\n'
    config.write_text(base + f'client_cert_file = "{pki.client.cert}"\n')
    with pytest.raises(ConfigError, match="client_cert_file and client_key_file go together: set both"):
        load_settings(config, environ={})
    config.write_text(base + f'client_cert_file = "{pki.client.cert}"\nclient_key_file = "{pki.server.key}"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    assert str(caught.value) == (f"{config}: client_cert_file / client_key_file: cannot use {pki.client.cert} with "
                                 f"{pki.server.key}: the key is not the certificate's")  # fmt: skip
    config.write_text(base + f'hub_ca_file = "{pki.client.key}"\n')
    with pytest.raises(ConfigError, match=r"hub_ca_file: .* holds no usable PEM certificate"):
        load_settings(config, environ={})


def test_hub_refuses_to_start_without_its_certificate(tmp_path: Path, hub_data: Path) -> None:
    """(h) `hub serve --tls-cert missing.pem` exits non-zero with one line, before serving anything."""
    run = subprocess.run([sys.executable, "-m", "edgefleet", "hub", "serve", "--data-dir", str(hub_data), "--port",
                          str(free_port()), "--tls-cert", str(tmp_path / "missing.pem"), "--tls-key",
                          str(tmp_path / "k.pem")], capture_output=True, text=True, timeout=60,
                         env=_env("EDGEFLEET_HUB_"))  # fmt: skip
    assert run.returncode != 0
    assert run.stderr.strip() == f"Error: tls_cert_file: no such file: {tmp_path / 'missing.pem'}", run.stderr


# ---- the broker's TLS listeners --------------------------------------------------------------------------
def test_mqtt_over_tls_refusals_are_one_line_each(
    tmp_path: Path, pki: Pki, unique_root: str, caplog: pytest.LogCaptureFixture
) -> None:
    """(g) a real Mosquitto with one TLS listener per case: an expired certificate, one from a CA the device does
    not trust, one for another host name, and one that requires a client certificate. The session never
    connects to the first three and logs one warning naming the reason (retries are quieter); to the last it
    connects only with a device certificate from the broker's CA."""
    from agent.mqtt import MqttSession

    ports = {name: free_port() for name in ("untrusted", "wrong_host", "mtls")}

    def listener(name: str, pair: KeyPair, *more: str) -> list[str]:
        return [f"listener {ports[name]} 127.0.0.1", f"certfile {pair.cert}", f"keyfile {pair.key}", *more]

    broker = start_broker(tmp_path / "broker", extra_conf=[  # the first listener (broker.port): expired
        f"certfile {pki.expired.cert}", f"keyfile {pki.expired.key}",
        *listener("untrusted", pki.untrusted), *listener("wrong_host", pki.wrong_host),
        *listener("mtls", pki.server, f"cafile {pki.ca}", "require_certificate true"),
    ])  # fmt: skip
    ports["expired"] = broker.port

    def session(name: str, pair: KeyPair | None = None) -> MqttSession:
        return MqttSession(device_id=f"dev-{name.replace('_', '-')}", host="127.0.0.1", port=ports[name],
                           username=None, password=None, root=unique_root, on_message=lambda _c, _p: None,
                           backoff=(0.05, 0.2), rng=random.Random(0), tls=True, ca_file=pki.ca,
                           client_cert_file=pair.cert if pair else None, client_key_file=pair.key if pair else None,
                           connack_timeout_s=3.0)  # fmt: skip

    sessions = {name: session(name) for name in ("expired", "untrusted", "wrong_host", "mtls")}
    with_cert = session("mtls", pki.client)
    expected = {
        "expired": EXPIRED,
        "untrusted": f"{UNTRUSTED.format(peer='broker')} by the CA in mqtt_ca_file ({pki.ca}) "
                     "(CERTIFICATE_VERIFY_FAILED)",
        "wrong_host": f"{WRONG_HOST} (CERTIFICATE_VERIFY_FAILED)",
        "mtls": "the broker wants a client certificate and this device has none: set client_cert_file and "
                "client_key_file (TLSV13_ALERT_CERTIFICATE_REQUIRED)",
    }  # fmt: skip

    def lines(name: str, level: int) -> list[str]:
        prefix = f"mqtt TLS connection to 127.0.0.1:{ports[name]} failed: "
        return [r.getMessage() for r in caplog.records if r.levelno == level and r.getMessage().startswith(prefix)]

    try:
        with caplog.at_level(logging.INFO, logger="agent.mqtt"):
            for s in (*sessions.values(), with_cert):
                s.start()
            assert with_cert.connected.wait(20), broker.log_path.read_text()[-2000:]
            deadline = time.monotonic() + 30
            while not all(len(lines(name, logging.INFO)) >= 2 for name in sessions):  # retried twice or more
                assert time.monotonic() < deadline, caplog.text[-3000:]
                time.sleep(0.1)
        for name, s in sessions.items():
            assert s.connects == 0 and not s.connected.is_set(), name
            prefix = f"mqtt TLS connection to 127.0.0.1:{ports[name]} failed: "
            assert lines(name, logging.WARNING) == [f"{prefix}{expected[name]}; retrying with backoff"], name
            assert set(lines(name, logging.INFO)) == {f"{prefix}{expected[name]}; retrying with backoff"}, name
    finally:
        for s in (*sessions.values(), with_cert):
            s.stop(timeout=2)
        broker.stop()
