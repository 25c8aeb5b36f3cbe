"""A hub cluster in real processes: one private Mosquitto (hub-generated auth files), N `edgefleet hub serve`
replicas on one PostgreSQL schema sharing one data dir (or, `separate_data_dirs`, each its own with only the
TUF keys and the hub's broker password copied in), and simulated devices enrolled through any replica."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import httpx

from edgefleet.replicas import Replica
from hub.mqtt.auth import HUB_USERNAME, MosquittoAuth
from hub.security import mosquitto_hash
from hub.services import init_data_dir
from hub.settings import HubSettings
from protocol.http import ENROLL_PATH, EnrollResponse
from tests.hub.e2e import ADMIN_TOKEN
from tests.hub.simdevice import SimDevice
from tests.hub.support import tar_gz, write_folder
from tests.support.broker import Broker, start_broker


@dataclass
class Cluster:
    """A broker, hub replicas and the simulated devices enrolled with them."""

    workdir: Path
    root: str
    db_url: str
    broker: Broker | None = None
    replicas: list[Replica] = field(default_factory=list)
    devices: dict[str, SimDevice] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    public_url: str | None = None  # what enrollment hands devices (a load balancer); default: each replica's URL
    separate_data_dirs: bool = False  # each replica its own data dir (storage_backend=postgresql shares the rest)
    _turn: count[int] = field(default_factory=count)

    @property
    def data_dir(self) -> Path:
        return self.workdir / "hub"

    def replica_data_dir(self, replica: Replica) -> Path:
        """Where `replica` keeps its data: the shared data dir, or its own."""
        return self.workdir / f"hub-{replica.name}" if self.separate_data_dirs else self.data_dir

    def start_broker(self, **settings: Any) -> None:
        backend = str(settings.get("storage_backend", "directory"))
        if backend == "directory":
            init_data_dir(HubSettings(data_dir=self.data_dir))
        else:  # the TUF repository goes into the database (migrated first); the data dir keeps the keys
            init_data_dir(HubSettings(data_dir=self.data_dir, database_url=self.db_url, storage_backend=backend))
        hub_pw = (self.data_dir / "mqtt_hub_password").read_text().strip()
        auth = MosquittoAuth(password_file=self.workdir / "auth" / "passwd", acl_file=self.workdir / "auth" / "acl",
                             pid_file=self.workdir / "mosquitto.pid", topic_root=self.root)  # fmt: skip
        auth.apply({HUB_USERNAME: mosquitto_hash(hub_pw)})
        conf = [f"password_file {auth.password_file}", f"acl_file {auth.acl_file}", f"pid_file {auth.pid_file}"]
        self.broker = start_broker(self.workdir / "mosq", extra_conf=conf)
        self.env = {
            "EDGEFLEET_HUB_DATA_DIR": str(self.data_dir), "EDGEFLEET_HUB_DATABASE_URL": self.db_url,
            "EDGEFLEET_HUB_ADMIN_TOKEN": ADMIN_TOKEN, "EDGEFLEET_HUB_MQTT_PORT": str(self.broker.port),
            "EDGEFLEET_HUB_TOPIC_ROOT": self.root, "EDGEFLEET_HUB_ROLLOUT_TICK_S": "0.2",
            "EDGEFLEET_HUB_MOSQUITTO_PASSWORD_FILE": str(auth.password_file),
            "EDGEFLEET_HUB_MOSQUITTO_ACL_FILE": str(auth.acl_file),
            "EDGEFLEET_HUB_MOSQUITTO_PID_FILE": str(auth.pid_file),
            **{f"EDGEFLEET_HUB_{k.upper()}": str(v) for k, v in settings.items()},
        }  # fmt: skip

    def launch(self, replica: Replica | None = None) -> Replica:
        """Start a replica process (a new one, or `replica` again on its port) without waiting for it."""
        if replica is None:
            replica = Replica(name=f"r{len(self.replicas)}", log_path=self.workdir / f"hub-r{len(self.replicas)}.log")
            self.replicas.append(replica)
        log = replica.log_path.open("ab")
        cmd = [sys.executable, "-m", "edgefleet", "hub", "serve", "--port", str(replica.port)]
        env = {**os.environ, **self.env, "EDGEFLEET_HUB_PUBLIC_URL": self.public_url or replica.url}
        if self.separate_data_dirs:
            env["EDGEFLEET_HUB_DATA_DIR"] = str(self._own_data_dir(replica))
        replica.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
        return replica

    def _own_data_dir(self, replica: Replica) -> Path:
        """A replica's own data dir, provisioned on first use with copies of the keys and broker password only."""
        own = self.replica_data_dir(replica)
        if not own.exists():
            own.mkdir(mode=0o700)
            shutil.copytree(self.data_dir / "tuf" / "keys", own / "tuf" / "keys")
            shutil.copy2(self.data_dir / "mqtt_hub_password", own / "mqtt_hub_password")
        return own

    def wait_ready(self, replica: Replica, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert replica.alive, replica.log_path.read_text()[-3000:]
            health = replica.health()
            if health is not None and health["mqtt_connected"]:
                return health
            time.sleep(0.1)
        raise TimeoutError(replica.log_path.read_text()[-3000:])

    def start(self, n: int) -> None:
        """Start `n` replicas at once (they race for the start-up lock and the lease) and wait for all."""
        started = [self.launch() for _ in range(n)]
        for replica in started:
            self.wait_ready(replica)

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive]

    def leaders(self, other_than: Replica | None = None) -> list[Replica]:
        """Live replicas (but `other_than`, which may be frozen) whose /healthz says leader."""
        asked = [r for r in self.live() if r is not other_than]
        return [r for r in asked if (h := r.health()) is not None and h["leader"]]

    def wait_leader(self, timeout: float = 15, other_than: Replica | None = None) -> Replica:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.leaders(other_than)
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no leader within {timeout}s: {[r.health() for r in self.live()]}")

    def kill(self, replica: Replica) -> None:
        assert replica.proc is not None
        replica.proc.send_signal(signal.SIGKILL)
        replica.proc.wait(10)

    def terminate(self, replica: Replica) -> None:
        assert replica.proc is not None
        replica.proc.terminate()
        replica.proc.wait(30)

    def pick(self, replica: Replica | None = None) -> Replica:
        """`replica`, or the live replicas in turn (what a round-robin load balancer would do)."""
        if replica is not None:
            return replica
        live = self.live()
        return live[next(self._turn) % len(live)]

    def api(self, method: str, path: str, replica: Replica | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        return httpx.request(method, f"{self.pick(replica).url}{path}", headers=headers, timeout=60, **kwargs)

    def push(self, name: str, version: int, profiles: list[str], replica: Replica | None = None) -> httpx.Response:
        folder = write_folder(self.workdir / f"out-{name}-{version}", name, version, profiles)
        return self.api("POST", "/api/v1/models", replica, files={"archive": ("o.tar.gz", tar_gz(folder))})

    def enroll(self, device_id: str, replica: Replica | None = None, profile: str = "raspberry_pi_4") -> SimDevice:
        """Token from one replica, enrollment through another, then connect to the broker with the credentials."""
        tok = self.api("POST", "/api/v1/enrollment-tokens", json={})
        assert tok.status_code == 201, tok.text
        r = httpx.post(f"{self.pick(replica).url}{ENROLL_PATH}", json={"enrollment_token": tok.json()["token"],
                       "profile": profile, "device_id": device_id}, timeout=60)  # fmt: skip
        assert r.status_code == 201, r.text
        device = SimDevice(EnrollResponse.model_validate(r.json()), profile, self.root)
        self.devices[device_id] = device
        return device

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        r = self.api("GET", f"/api/v1/rollouts/{rollout_id}")
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result

    def wait_rollout(self, rollout_id: str, state: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ro = self.rollout(rollout_id)
            if ro["state"] == state:
                return ro
            time.sleep(0.1)
        raise AssertionError(f"rollout not {state}: {self.rollout(rollout_id)}")

    def logs(self) -> str:
        return "".join(r.log_path.read_text() for r in self.replicas if r.log_path.exists())

    def stop(self) -> None:
        for d in self.devices.values():
            d.disconnect()
        for r in self.live():
            self.terminate(r)
        if self.broker is not None:
            self.broker.stop()
