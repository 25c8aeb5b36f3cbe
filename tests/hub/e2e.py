"""End-to-end harness: a private Mosquitto with hub-generated auth, the hub under uvicorn in a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from hub.mqtt.auth import HUB_USERNAME, MosquittoAuth
from hub.security import mosquitto_hash
from hub.services import init_data_dir
from hub.settings import HubSettings
from protocol.http import ENROLL_PATH, EnrollResponse
from tests.hub.simdevice import SimDevice
from tests.hub.support import tar_gz, write_folder
from tests.support.broker import Broker, free_port, start_broker

ADMIN_TOKEN = "e2e-admin-token-0123456789"


@dataclass
class Fleet:
    """A broker, a hub process and the simulated devices enrolled with it."""

    workdir: Path
    root: str
    db_url: str
    broker: Broker | None = None
    proc: subprocess.Popen[bytes] | None = None
    port: int = field(default_factory=free_port)
    devices: dict[str, SimDevice] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def auth(self) -> MosquittoAuth:
        return MosquittoAuth(password_file=self.workdir / "auth" / "passwd", acl_file=self.workdir / "auth" / "acl",
                             pid_file=self.workdir / "mosquitto.pid", topic_root=self.root)  # fmt: skip

    def start_broker(self, **settings: Any) -> None:
        data = self.workdir / "hub"
        init_data_dir(HubSettings(data_dir=data))
        hub_pw = (data / "mqtt_hub_password").read_text().strip()
        self.auth.apply({HUB_USERNAME: mosquitto_hash(hub_pw)})
        a = self.auth
        self.broker = start_broker(self.workdir / "mosq", extra_conf=[
            f"password_file {a.password_file}", f"acl_file {a.acl_file}", f"pid_file {a.pid_file}"])  # fmt: skip
        self.env = {
            "EDGEFLEET_HUB_DATA_DIR": str(data), "EDGEFLEET_HUB_DATABASE_URL": self.db_url,
            "EDGEFLEET_HUB_ADMIN_TOKEN": ADMIN_TOKEN, "EDGEFLEET_HUB_PUBLIC_URL": self.url,
            "EDGEFLEET_HUB_MQTT_PORT": str(self.broker.port), "EDGEFLEET_HUB_TOPIC_ROOT": self.root,
            "EDGEFLEET_HUB_MOSQUITTO_PASSWORD_FILE": str(a.password_file),
            "EDGEFLEET_HUB_MOSQUITTO_ACL_FILE": str(a.acl_file),
            "EDGEFLEET_HUB_MOSQUITTO_PID_FILE": str(a.pid_file), "EDGEFLEET_HUB_ROLLOUT_TICK_S": "0.2",
            **{f"EDGEFLEET_HUB_{k.upper()}": str(v) for k, v in settings.items()},
        }  # fmt: skip

    def start_hub(self) -> None:
        log = (self.workdir / "hub.log").open("ab")
        cmd = [sys.executable, "-m", "edgefleet", "hub", "serve", "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, env={**os.environ, **self.env}, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.workdir / "hub.log").read_text()[-3000:]
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).json().get("mqtt_connected"):
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError((self.workdir / "hub.log").read_text()[-3000:])

    def kill_hub(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        for d in self.devices.values():
            d.disconnect()
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.broker is not None:
            self.broker.stop()
        log = (self.workdir / "hub.log").read_text()
        assert "Traceback" not in log, log[-4000:]

    def api(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kwargs)

    def push(self, name: str, version: int, profiles: list[str]) -> None:
        folder = write_folder(self.workdir / f"out-{name}-{version}", name, version, profiles)
        r = self.api("POST", "/api/v1/models", files={"archive": ("o.tar.gz", tar_gz(folder))})
        assert r.status_code in (200, 201), r.text

    def enroll(self, device_id: str, profile: str = "raspberry_pi_4", group: str | None = None,
               failing: set[int] | None = None, connect: bool = True) -> SimDevice:  # fmt: skip
        tok = self.api("POST", "/api/v1/enrollment-tokens", json={"group": group})
        r = httpx.post(f"{self.url}{ENROLL_PATH}", json={"enrollment_token": tok.json()["token"],
                       "profile": profile, "device_id": device_id}, timeout=30)  # fmt: skip
        assert r.status_code == 201, r.text
        device = SimDevice(EnrollResponse.model_validate(r.json()), profile, self.root, failing)
        self.devices[device_id] = device
        return device.connect() if connect else device

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        r = self.api("GET", f"/api/v1/rollouts/{rollout_id}")
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result

    def wait_rollout(self, rollout_id: str, state: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ro = self.rollout(rollout_id)
            if ro["state"] == state:
                return ro
            time.sleep(0.1)
        raise AssertionError(f"rollout not {state}: {self.rollout(rollout_id)}")
