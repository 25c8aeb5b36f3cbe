"""Real processes for bench/hub_cluster.py: a private PostgreSQL schema, one Mosquitto with the dynamic-security
plugin, and `edgefleet hub serve` replicas on both (EDGEFLEET_HUB_BROKER_AUTH=dynsec) sharing one data dir.

The ideas of tests/cluster/replicas.py, kept here so the benchmark does not follow the tests' harness as it
changes; the broker is set up as tests/hub/test_dynsec.py sets it up (`initial_config`), plus one load account
(`LOAD_USER`, readwrite on the topic root) for the benchmark's publisher and its bare paho baseline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import psycopg

from edgefleet.brokers import Broker, start_broker
from edgefleet.replicas import Replica
from hub.mqtt.dynsec import initial_config
from hub.security import mosquitto_hash
from hub.services import init_data_dir
from hub.settings import HubSettings

PG_DSN = "postgresql://postgres@127.0.0.1:5432/test"
PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
ADMIN_TOKEN = "bench-admin-token-000000"
LOAD_USER = "bench-load"


@dataclass(frozen=True)
class Schema:
    """A throwaway PostgreSQL schema: its name and the hub's database URL whose search_path is it."""

    name: str

    @property
    def application_name(self) -> str:
        """What the replicas' pooled connections call themselves (pg_stat_activity): their backends' CPU is ours."""
        return f"ef-{self.name}"

    @property
    def url(self) -> str:
        return (f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{self.name}"
                f"&application_name={self.application_name}")  # fmt: skip

    def connect(self, application_name: str = "ef-bench") -> psycopg.Connection[Any]:
        return psycopg.connect(PG_DSN, autocommit=True, options=f"-csearch_path={self.name}",
                               application_name=application_name)  # fmt: skip

    def backends(self, conn: psycopg.Connection[Any]) -> list[int]:
        """Pids of the replicas' pooled connections' backends."""
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", (self.application_name,))
        return [int(r[0]) for r in rows]


@contextmanager
def pg_schema() -> Iterator[Schema]:
    """Create a unique schema, drop it (and everything in it) afterwards."""
    schema = Schema(f"bench_{uuid.uuid4().hex[:12]}")
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema.name}"')
    try:
        yield schema
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema.name}" CASCADE')


@dataclass
class Cluster:
    """A dynsec broker and hub replicas on one schema; the broker's load account for publishers."""

    workdir: Path
    root: str
    db_url: str
    broker: Broker | None = None
    replicas: list[Replica] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    load_roots: tuple[str, ...] = ()  # more topic roots the load account may use (besides `root`)
    load_password: str = field(default_factory=lambda: uuid.uuid4().hex)
    _turn: count[int] = field(default_factory=count)

    @property
    def data_dir(self) -> Path:
        return self.workdir / "hub"

    @property
    def port(self) -> int:
        assert self.broker is not None
        return self.broker.port

    def start_broker(self, **settings: Any) -> None:
        """Mosquitto with the plugin: the hub's account and role, the load account, default deny."""
        init_data_dir(HubSettings(data_dir=self.data_dir))
        hub_pw = (self.data_dir / "mqtt_hub_password").read_text().strip()
        config = initial_config(hub_password_hash=mosquitto_hash(hub_pw), topic_root=self.root)
        load = initial_config(hub_password_hash=mosquitto_hash(self.load_password), topic_root=self.root)
        config["clients"].append({**load["clients"][0], "username": LOAD_USER, "roles": [{"rolename": LOAD_USER}]})
        rights = ("publishClientSend", "publishClientReceive", "subscribePattern")
        config["roles"].append({"rolename": LOAD_USER, "acls": [
            {"acltype": acl, "topic": f"{root}/#", "allow": True} for acl in rights
            for root in (self.root, *self.load_roots)]})  # fmt: skip
        (self.workdir / "dynsec.json").write_text(json.dumps(config))
        conf = [f"plugin {PLUGIN}", f"plugin_opt_config_file {self.workdir / 'dynsec.json'}"]
        self.broker = start_broker(self.workdir / "mosq", extra_conf=conf, persistence=False)
        self.env = {
            "EDGEFLEET_HUB_DATA_DIR": str(self.data_dir), "EDGEFLEET_HUB_DATABASE_URL": self.db_url,
            "EDGEFLEET_HUB_ADMIN_TOKEN": ADMIN_TOKEN, "EDGEFLEET_HUB_MQTT_PORT": str(self.broker.port),
            "EDGEFLEET_HUB_TOPIC_ROOT": self.root, "EDGEFLEET_HUB_BROKER_AUTH": "dynsec",
            **{f"EDGEFLEET_HUB_{k.upper()}": str(v) for k, v in settings.items()},
        }  # fmt: skip

    def launch(self, replica: Replica | None = None) -> Replica:
        """Start a replica process (a new one, or `replica` again on its port) without waiting for it."""
        if replica is None:
            n = len(self.replicas)
            replica = Replica(name=f"r{n}", log_path=self.workdir / f"hub-r{n}.log")
            self.replicas.append(replica)
        cmd = [sys.executable, "-m", "edgefleet", "hub", "serve", "--port", str(replica.port)]
        env = {**os.environ, **self.env, "EDGEFLEET_HUB_PUBLIC_URL": replica.url}
        with replica.log_path.open("ab") as log:
            replica.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log)
        return replica

    def wait_ready(self, replica: Replica, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not replica.alive:
                raise RuntimeError(f"replica {replica.name} exited: {replica.log_path.read_text()[-3000:]}")
            health = replica.health()
            if health is not None and health["mqtt_connected"]:
                return health
            time.sleep(0.1)
        raise TimeoutError(f"replica {replica.name} not ready: {replica.log_path.read_text()[-3000:]}")

    def start(self, n: int) -> list[Replica]:
        """Start `n` more replicas at once and wait for all."""
        started = [self.launch() for _ in range(n)]
        for replica in started:
            self.wait_ready(replica)
        return started

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive]

    def wait_leader(self, timeout: float = 15) -> Replica:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for r in self.live():
                if (h := r.health()) is not None and h["leader"]:
                    return r
            time.sleep(0.05)
        raise TimeoutError(f"no leader within {timeout}s: {[r.health() for r in self.live()]}")

    def kill(self, replica: Replica) -> None:
        """kill -9."""
        assert replica.proc is not None
        replica.proc.send_signal(signal.SIGKILL)
        replica.proc.wait(10)

    def terminate(self, replica: Replica) -> None:
        """SIGTERM: a clean stop (its shared subscriptions and, if it led, the lease are given up)."""
        assert replica.proc is not None
        replica.proc.terminate()
        replica.proc.wait(30)

    def api(self, method: str, path: str, replica: Replica | None = None, **kwargs: Any) -> httpx.Response:
        """An admin request to `replica`, or to the live replicas in turn (a round-robin load balancer)."""
        if replica is None:
            live = self.live()
            replica = live[next(self._turn) % len(live)]
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        return httpx.request(method, f"{replica.url}{path}", headers=headers, timeout=60, **kwargs)

    def logs(self) -> str:
        return "".join(r.log_path.read_text() for r in self.replicas if r.log_path.exists())

    def stop(self) -> None:
        """SIGTERM every live replica (SIGKILL after 30 s), then the broker."""
        for r in self.live():
            assert r.proc is not None
            r.proc.terminate()
        for r in self.replicas:
            if r.proc is not None and r.proc.poll() is None:
                try:
                    r.proc.wait(30)
                except subprocess.TimeoutExpired:
                    r.proc.kill()
                    r.proc.wait()
        if self.broker is not None:
            self.broker.stop()
