"""The hub's long-lived parts wired together once, from settings: storage, TUF, broker auth, bridge, engine."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine

from hub import datadir
from hub.db.engine import make_engine, upgrade
from hub.errors import HubError
from hub.metrics import HubMetrics
from hub.mqtt.auth import HUB_USERNAME, MosquittoAuth
from hub.mqtt.bridge import MqttBridge
from hub.rollouts.engine import RolloutEngine
from hub.security import mosquitto_hash, new_password, new_token
from hub.settings import HubSettings
from hub.store import devices as device_store
from hub.telemetry.monitor import TelemetryMonitor
from hub.telemetry.retention import Retention
from hub.tuf_repo import Clock, TufRepository, utcnow

log = logging.getLogger(__name__)


def init_data_dir(settings: HubSettings) -> str | None:
    """Create the data dir, TUF keys/metadata, admin token and hub broker password; returns a new admin token."""
    datadir.secure(settings.data_dir, sqlite_here=settings.database_url is None)
    TufRepository.open_or_create(settings.tuf_dir)
    if not settings.mqtt_password_file.exists():
        _write_secret(settings, settings.mqtt_password_file.name, new_password())
    if settings.admin_token_file.exists():
        return None
    token = new_token("efa")
    _write_secret(settings, settings.admin_token_file.name, token)
    return token


def _write_secret(settings: HubSettings, name: str, value: str) -> None:
    path = settings.data_dir / name
    path.touch(mode=0o600, exist_ok=True)
    os.chmod(path, 0o600)
    path.write_text(value + "\n")


@dataclass
class Hub:
    """Everything routes and background jobs share; built in main and passed down."""

    settings: HubSettings
    clock: Clock = utcnow
    engine: Engine = field(init=False)
    repo: TufRepository = field(init=False)
    metrics: HubMetrics = field(init=False)
    rollouts: RolloutEngine = field(init=False)
    telemetry: TelemetryMonitor = field(init=False)
    bridge: MqttBridge | None = field(init=False, default=None)
    auth: MosquittoAuth | None = field(init=False, default=None)
    admin_token: str = field(init=False)
    _hub_hash: str | None = field(init=False, default=None)
    _auth_lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _stop: threading.Event = field(init=False, default_factory=threading.Event)
    _threads: list[threading.Thread] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        s = self.settings
        init_data_dir(s)
        datadir.remove_crash_leftovers(s.data_dir, s.tuf_dir)
        self.admin_token = s.admin_token or s.admin_token_file.read_text().strip()
        self.engine = make_engine(s.resolved_database_url())
        upgrade(self.engine)
        self.repo = TufRepository.open_or_create(s.tuf_dir, clock=self.clock)
        self.metrics = HubMetrics()
        self.rollouts = RolloutEngine(engine=self.engine, clock=self.clock)
        retention = Retention(raw_s=s.telemetry_raw_retention_s, hourly_s=s.telemetry_hourly_retention_s,
                              events_s=s.events_retention_s)  # fmt: skip
        self.telemetry = TelemetryMonitor(engine=self.engine, metrics=self.metrics, clock=self.clock,
                                          window_s=s.telemetry_window_s, alert_min_n=s.telemetry_alert_min_n,
                                          retention=retention)  # fmt: skip
        if s.mosquitto_password_file and s.mosquitto_acl_file:
            self.auth = MosquittoAuth(
                password_file=s.mosquitto_password_file,
                acl_file=s.mosquitto_acl_file,
                pid_file=s.mosquitto_pid_file,
                topic_root=s.topic_root,
                binary=s.mosquitto_binary,
            )

    @property
    def mqtt_password(self) -> str:
        return self.settings.mqtt_password_file.read_text().strip()

    def sync_broker_auth(self, conn: Connection | None = None) -> None:
        """Rewrite the broker's password/ACL files from the device table (validated, then SIGHUP).

        Given the enrollment's own connection, the new device's account is live before the enrollment
        commits; if the broker refuses, the transaction rolls back and the token is not used up. That
        view misses other enrollments still in flight, so every change calls this again after its commit
        (no connection): reading and applying under one lock, the last call writes every committed account.
        """
        if self.auth is None:
            return
        with self._auth_lock:
            if conn is None:
                with self.engine.connect() as own:
                    hashes = device_store.password_hashes(conn=own)
            else:
                hashes = device_store.password_hashes(conn=conn)
            if self._hub_hash is None:  # one salt per process: a changed hash makes mosquitto drop the hub
                self._hub_hash = mosquitto_hash(self.mqtt_password)
            hashes[HUB_USERNAME] = self._hub_hash
            self.auth.apply(hashes)

    def start(self) -> None:
        """Broker auth, MQTT bridge, rollout ticks and the TUF expiry job."""
        s = self.settings
        self.sync_broker_auth()
        if s.mqtt_enabled:
            self.bridge = MqttBridge(
                host=s.mqtt_host,
                port=s.mqtt_port,
                username=HUB_USERNAME if self.auth else None,
                password=self.mqtt_password if self.auth else None,
                topic_root=s.topic_root,
                engine=self.engine,
                clock=self.clock,
                metrics=self.metrics,
                protocol=s.mqtt_protocol,
                on_devices_changed=lambda _ids: self.rollouts.wake.set(),
            )
            self.rollouts.publish = self.bridge.publish_desired
            self.bridge.start()
        self._spawn("hub-rollouts", lambda: self.rollouts.run(self._stop, s.rollout_tick_s))
        self._spawn("hub-tuf-refresh", self._refresh_tuf)
        self._spawn("hub-telemetry", lambda: self.telemetry.run(self._stop, s.telemetry_eval_s))

    def stop(self) -> None:
        """Stop background jobs, then the bridge, then the database pool."""
        self._stop.set()
        self.rollouts.wake.set()
        for t in self._threads:
            t.join(timeout=30)
        if self.bridge is not None:
            self.bridge.stop()
        self.engine.dispose()

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _refresh_tuf(self) -> None:
        while not self._stop.is_set():
            try:
                resigned = self.repo.refresh_expiring()
                if resigned:
                    log.info("re-signed TUF metadata: %s", ", ".join(resigned))
            except HubError:
                log.exception("TUF refresh failed")
            self._stop.wait(self.settings.tuf_refresh_s)
