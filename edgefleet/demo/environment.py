"""The demo's embedded control plane: an MQTT broker and a hub, on this machine, in a temp data dir.

Broker choice: the one in `EDGEFLEET_MQTT_URL` (mqtt://host:port) if set; else a private Mosquitto
with the hub's per-device password and ACL files if the binary is installed; else amqtt (an MQTT
3.1.1-only broker, so the whole system runs on 3.1.1) if it is on PATH or in `.venv-amqtt`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from edgefleet.brokers import MOSQUITTO, Broker, free_port, start_broker, wait_port

TOPIC_ROOT = "edgefleet/v1"
FINAL = ("completed", "aborted", "rolled_back", "paused")  # paused: a gate stopped it and nobody resumes


def rollout_health(rollout: dict[str, Any]) -> tuple[int, int]:
    """(healthy devices, devices in the rollout) from a rollout as the hub's API shows it."""
    waves = rollout.get("waves", [])
    return sum(w["counts"].get("healthy", 0) for w in waves), sum(w["total"] for w in waves)


class DemoError(RuntimeError):
    """The demo cannot set itself up; the message says what to install or set."""


@dataclass
class ExternalBroker:
    """A broker somebody else runs (EDGEFLEET_MQTT_URL) or an amqtt subprocess."""

    host: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    protocol: str = "auto"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def restart(self) -> None:
        raise DemoError("the demo restarts only the private Mosquitto it started itself")


def _amqtt_binary() -> str | None:
    found = shutil.which("amqtt")
    local = Path(__file__).resolve().parents[2] / ".venv-amqtt" / "bin" / "amqtt"
    return found or (str(local) if local.exists() else None)


@dataclass
class DemoEnvironment:
    """Broker + hub subprocess; `api()` talks to the hub as the operator."""

    root: Path
    admin_token: str = "demo-admin-token-0123456789abcdef"
    hub_port: int = field(default_factory=free_port)
    broker: Broker | ExternalBroker | None = None
    hub: subprocess.Popen[bytes] | None = None
    broker_kind: str = ""
    hub_env: dict[str, str] = field(default_factory=dict)
    public_url: str | None = None  # the URL devices are told to use (e.g. a proxy in front of the hub)

    @property
    def hub_url(self) -> str:
        return f"http://127.0.0.1:{self.hub_port}"

    def start(self) -> None:
        from hub.services import init_data_dir
        from hub.settings import HubSettings

        data = self.root / "hub"
        init_data_dir(HubSettings(data_dir=data))
        env = {
            "EDGEFLEET_HUB_DATA_DIR": str(data),
            "EDGEFLEET_HUB_ADMIN_TOKEN": self.admin_token,
            "EDGEFLEET_HUB_PUBLIC_URL": self.public_url or self.hub_url,
            "EDGEFLEET_HUB_TOPIC_ROOT": TOPIC_ROOT,
            "EDGEFLEET_HUB_ROLLOUT_TICK_S": "0.25",
        }
        env.update(self._start_broker(data))
        self.hub_env = env
        self.start_hub()

    def _start_broker(self, data: Path) -> dict[str, str]:
        url = os.environ.get("EDGEFLEET_MQTT_URL")
        if url:
            parsed = urlparse(url)
            if parsed.scheme not in ("mqtt", "tcp") or not parsed.hostname:
                raise DemoError(f"EDGEFLEET_MQTT_URL={url!r}: use mqtt://host:port")
            self.broker = ExternalBroker(parsed.hostname, parsed.port or 1883)
            self.broker_kind = f"external broker {parsed.hostname}:{parsed.port or 1883} (EDGEFLEET_MQTT_URL)"
            return {"EDGEFLEET_HUB_MQTT_HOST": parsed.hostname, "EDGEFLEET_HUB_MQTT_PORT": str(parsed.port or 1883)}
        if Path(MOSQUITTO).exists():
            return self._start_mosquitto(data)
        amqtt = _amqtt_binary()
        if amqtt:
            port = free_port()
            conf = self.root / "amqtt.yaml"
            conf.write_text(
                f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\nplugins:\n"
                "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
            )
            log = (self.root / "amqtt.log").open("wb")
            proc = subprocess.Popen([amqtt, "-c", str(conf)], stdout=log, stderr=log)
            wait_port("127.0.0.1", port, timeout=20)
            self.broker = ExternalBroker("127.0.0.1", port, proc, protocol="3.1.1")
            self.broker_kind = f"amqtt on 127.0.0.1:{port} (MQTT 3.1.1 only, no per-device auth)"
            return {"EDGEFLEET_HUB_MQTT_PORT": str(port)}
        raise DemoError(
            "no MQTT broker: install mosquitto (apt-get install mosquitto), or set EDGEFLEET_MQTT_URL=mqtt://host:port"
        )

    def _start_mosquitto(self, data: Path) -> dict[str, str]:
        from hub.mqtt.auth import HUB_USERNAME, MosquittoAuth
        from hub.security import mosquitto_hash

        auth_dir = self.root / "mosquitto-auth"
        auth = MosquittoAuth(
            password_file=auth_dir / "passwd",
            acl_file=auth_dir / "acl",
            pid_file=self.root / "mosquitto.pid",
            topic_root=TOPIC_ROOT,
            binary=MOSQUITTO,
        )
        auth.apply({HUB_USERNAME: mosquitto_hash((data / "mqtt_hub_password").read_text().strip())})
        self.broker = start_broker(
            self.root / "mosquitto",
            extra_conf=[
                f"password_file {auth.password_file}",
                f"acl_file {auth.acl_file}",
                f"pid_file {auth.pid_file}",
            ],
        )
        self.broker_kind = f"private Mosquitto on 127.0.0.1:{self.broker.port} (per-device passwords + ACL)"
        return {
            "EDGEFLEET_HUB_MQTT_PORT": str(self.broker.port),
            "EDGEFLEET_HUB_MOSQUITTO_PASSWORD_FILE": str(auth.password_file),
            "EDGEFLEET_HUB_MOSQUITTO_ACL_FILE": str(auth.acl_file),
            "EDGEFLEET_HUB_MOSQUITTO_PID_FILE": str(auth.pid_file),
            "EDGEFLEET_HUB_MOSQUITTO_BINARY": MOSQUITTO,
        }

    def start_hub(self) -> None:
        log = (self.root / "hub.log").open("ab")
        cmd = [sys.executable, "-m", "edgefleet", "hub", "serve", "--port", str(self.hub_port)]
        self.hub = subprocess.Popen(cmd, env={**os.environ, **self.hub_env}, stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.hub.poll() is not None:
                raise DemoError(f"the hub exited: {(self.root / 'hub.log').read_text()[-1500:]}")
            try:
                if httpx.get(f"{self.hub_url}/healthz", timeout=1).json().get("mqtt_connected"):
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        raise DemoError(f"the hub did not come up: {(self.root / 'hub.log').read_text()[-1500:]}")

    def api(self, method: str, path: str, *, timeout: float = 60, **kwargs: Any) -> Any:
        r = httpx.request(
            method,
            f"{self.hub_url}{path}",
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=timeout,
            **kwargs,
        )
        if r.status_code >= 400:
            raise DemoError(f"hub: {method} {path} -> {r.status_code}: {r.text[:300]}")
        return r.json()

    def started(self) -> list[str]:
        """What this environment started, in words (a broker named in EDGEFLEET_MQTT_URL is somebody else's)."""
        parts = ["the hub"] if self.hub is not None else []
        if isinstance(self.broker, ExternalBroker):
            parts += ["the amqtt broker"] if self.broker.proc is not None else []
        elif self.broker is not None:
            parts.append("the Mosquitto broker")
        return parts

    def stop(self) -> None:
        if self.hub is not None and self.hub.poll() is None:
            self.hub.send_signal(signal.SIGTERM)
            try:
                self.hub.wait(15)
            except subprocess.TimeoutExpired:
                self.hub.kill()
                self.hub.wait()
        if self.broker is not None:
            self.broker.stop()
