"""The hub's long-lived parts wired together once, from settings: storage, TUF, broker auth, bridge, engine.

Several replicas may serve one PostgreSQL database (docs/hub.md#cluster): the singleton jobs (rollout ticks,
telemetry monitor and retention, TUF expiry refresh) run only while this replica holds the leader lease
(hub/cluster/leader.py). On SQLite the hub is one process: it locks its data dir and always leads.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from hub import datadir
from hub.cluster import locks
from hub.cluster.dirlock import DataDirLock
from hub.cluster.leader import LeaderLease, Leadership, SoleLeader, pg_connector
from hub.db.engine import make_engine, upgrade
from hub.errors import HubError
from hub.metrics import HubMetrics
from hub.mqtt.auth import HUB_USERNAME, MosquittoAuth
from hub.mqtt.bridge import MqttBridge
from hub.mqtt.dynsec import DynsecAccounts
from hub.rollouts.engine import RolloutEngine
from hub.security import mosquitto_hash, new_password, new_token
from hub.settings import HubSettings
from hub.storage import Storage, open_storage, opened
from hub.store import devices as device_store
from hub.telemetry.monitor import TelemetryMonitor
from hub.telemetry.retention import Retention
from hub.tuf_repo import Clock, TufRepository, utcnow
from protocol.messages import DesiredState

log = logging.getLogger(__name__)
JOB_JOIN_S = 15.0  # how long stepping down waits for a job's current pass before leaving it to finish alone


def init_data_dir(settings: HubSettings, storage: Storage | None = None) -> str | None:
    """Create the data dir, TUF keys/metadata, admin token and hub broker password; returns a new admin token.

    `storage`: where the TUF metadata goes; default the configured backend (on PostgreSQL, migrated first).
    """
    datadir.secure(settings.data_dir, sqlite_here=settings.database_url is None)
    if storage is None:
        with opened(settings, migrate=True) as own:
            TufRepository.open_or_create(settings.tuf_dir, storage=own)
    else:
        TufRepository.open_or_create(settings.tuf_dir, storage=storage)
    if not settings.mqtt_password_file.exists():
        _write_secret(settings, settings.mqtt_password_file.name, new_password())
    if settings.admin_token_file.exists():
        return None
    token = new_token("efa")
    _write_secret(settings, settings.admin_token_file.name, token)
    return token


def init_broker_files(settings: HubSettings) -> tuple[Path, Path] | None:
    """With `broker_auth = files` and both Mosquitto files configured: write them (the hub's own account and the
    ACL) if they are not there yet, so Mosquitto can start before `hub serve` first runs; `serve` rewrites them with
    every device's account. Returns their paths, or None when the hub does not manage them."""
    s = settings
    if not (s.mqtt_enabled and s.broker_auth == "files" and s.mosquitto_password_file and s.mosquitto_acl_file):
        return None
    files = (s.mosquitto_password_file, s.mosquitto_acl_file)
    if not all(f.exists() for f in files):
        auth = MosquittoAuth(password_file=files[0], acl_file=files[1], pid_file=None, topic_root=s.topic_root,
                             binary=s.mosquitto_binary)  # fmt: skip
        password = s.mqtt_password_file.read_text().strip()
        auth.apply({HUB_USERNAME: mosquitto_hash(password)})
    return files


def broker_config(settings: HubSettings) -> str:
    """A Mosquitto configuration that matches these settings (files mode): what `hub broker-config` prints."""
    s = settings
    lines = [
        "# Mosquitto for EdgeFleet (edgefleet hub broker-config): accounts and ACL written by the hub.",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {s.mosquitto_password_file or '/var/lib/edgefleet-hub/mosquitto/passwd'}",
        f"acl_file {s.mosquitto_acl_file or '/var/lib/edgefleet-hub/mosquitto/acl'}",
        f"pid_file {s.mosquitto_pid_file or '/run/mosquitto/mosquitto.pid'}",
        "",
        "# The hub (and devices on a trusted network): plain MQTT here. Devices over the internet: add a TLS",
        "# listener on 8883 (deploy/mosquitto.conf) and set EDGEFLEET_HUB_MQTT_PUBLIC_PORT=8883, _PUBLIC_TLS=true.",
        f"listener {s.mqtt_port} {s.mqtt_host}",
        "",
        "persistence true",
        "max_queued_messages 10000",
        "message_size_limit 1048576",
    ]
    return "\n".join(lines) + "\n"


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
    storage: Storage = field(init=False)
    repo: TufRepository = field(init=False)
    metrics: HubMetrics = field(init=False)
    rollouts: RolloutEngine = field(init=False)
    telemetry: TelemetryMonitor = field(init=False)
    bridge: MqttBridge | None = field(init=False, default=None)
    auth: MosquittoAuth | None = field(init=False, default=None)
    dynsec: DynsecAccounts | None = field(init=False, default=None)
    admin_token: str = field(init=False)
    replica_id: str = field(init=False)
    leadership: Leadership = field(init=False)
    _dir_lock: DataDirLock | None = field(init=False, default=None)
    _hub_hash: str | None = field(init=False, default=None)
    _auth_lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _jobs_lock: threading.Lock = field(init=False, default_factory=threading.Lock)
    _jobs_stop: threading.Event = field(init=False, default_factory=threading.Event)
    _jobs: list[threading.Thread] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        s = self.settings
        self.replica_id = f"{socket.gethostname()}-{os.getpid()}"
        url = s.resolved_database_url()
        self.leadership = SoleLeader(self.replica_id)  # PostgreSQL: replaced by the lease in _prepare
        if url.startswith("sqlite"):
            self._dir_lock = DataDirLock(s.data_dir)
            self._dir_lock.acquire()  # a second hub on this data dir stops here with one line
        self.engine = make_engine(url)
        try:
            self.storage = open_storage(s, self.engine)  # postgresql storage on SQLite stops here, with one line
            self._prepare()
        except BaseException:
            self._release()
            raise
        self.admin_token = s.admin_token or s.admin_token_file.read_text().strip()
        self.repo = TufRepository.open_or_create(s.tuf_dir, clock=self.clock, storage=self.storage)
        self.metrics = HubMetrics()
        self.rollouts = RolloutEngine(engine=self.engine, clock=self.clock)
        self.rollouts.actor = f"engine@{self.replica_id}"[:64]
        retention = Retention(raw_s=s.telemetry_raw_retention_s, hourly_s=s.telemetry_hourly_retention_s,
                              events_s=s.events_retention_s)  # fmt: skip
        self.telemetry = TelemetryMonitor(engine=self.engine, metrics=self.metrics, clock=self.clock,
                                          window_s=s.telemetry_window_s, alert_min_n=s.telemetry_alert_min_n,
                                          retention=retention)  # fmt: skip
        if s.broker_auth == "dynsec":  # accounts live in the broker, changed over MQTT from any replica
            self.dynsec = DynsecAccounts(host=s.mqtt_host, port=s.mqtt_port, password=self.mqtt_password,
                                         topic_root=s.topic_root)  # fmt: skip
        elif s.mosquitto_password_file and s.mosquitto_acl_file:
            self.auth = MosquittoAuth(
                password_file=s.mosquitto_password_file,
                acl_file=s.mosquitto_acl_file,
                pid_file=s.mosquitto_pid_file,
                topic_root=s.topic_root,
                binary=s.mosquitto_binary,
            )

    def _prepare(self) -> None:
        """Data dir, crash-leftover sweep and migrations; with PostgreSQL one replica at a time, and the sweep
        only by a replica that starts alone (another's upload or TUF temp file is no leftover)."""
        s = self.settings
        if self._dir_lock is not None:
            init_data_dir(s, self.storage)
            datadir.remove_crash_leftovers(s.data_dir, s.tuf_dir)
            upgrade(self.engine)
            return
        lease = LeaderLease(connect=pg_connector(self.engine, application_name=f"edgefleet-hub {self.replica_id}"),
                            poll_s=s.leader_poll_s, replica=self.replica_id)  # fmt: skip
        self.leadership = lease
        with locks.held(self.engine, locks.STARTUP):
            alone = lease.register()
            upgrade(self.engine)  # before the TUF repository: storage_backend=postgresql keeps it in a table
            init_data_dir(s, self.storage)
            if alone:
                datadir.remove_crash_leftovers(s.data_dir, s.tuf_dir)
            else:
                log.info("other replicas are running: crash leftovers in %s are left to a replica that starts alone",
                         s.data_dir)  # fmt: skip

    @property
    def is_leader(self) -> bool:
        """Whether this replica runs the singleton jobs now."""
        return self.leadership.is_leader.is_set()

    @property
    def mqtt_password(self) -> str:
        return self.settings.mqtt_password_file.read_text().strip()

    def sync_broker_auth(self, conn: Connection | None = None) -> None:
        """Rewrite the broker's password/ACL files from the device table (validated, then SIGHUP).

        Given the enrollment's own connection, the new device's account is live before the enrollment
        commits; if the broker refuses, the transaction rolls back and the token is not used up. That
        view misses other enrollments still in flight, so every change calls this again after its commit
        (no connection): reading and applying under one lock, the last call writes every committed account.

        Replicas write the same files: the read and the write happen under a cluster-wide lock too.
        """
        if self.auth is None:
            return
        with self._auth_lock, locks.held(self.engine, locks.BROKER_AUTH):
            if conn is None:
                with self.engine.connect() as own:
                    hashes = device_store.password_hashes(conn=own)
            else:
                hashes = device_store.password_hashes(conn=conn)
            if self._hub_hash is None:  # a changed hash makes mosquitto drop the hub: keep one for the process
                # ...and across replicas: they share the password, so reuse the hash already in the file.
                password = self.mqtt_password
                current = _hash_in_file(self.auth.password_file, HUB_USERNAME)
                reuse = current is not None and _hash_matches(current, password)
                self._hub_hash = current if reuse and current is not None else mosquitto_hash(password)
            hashes[HUB_USERNAME] = self._hub_hash
            self.auth.apply(hashes)

    def start(self) -> None:
        """Broker auth and the MQTT bridge, then the leader election: the leader runs the singleton jobs."""
        s = self.settings
        if self.dynsec is not None:
            self.dynsec.ensure_hub_roles()  # DynsecError: the broker is not set up -> `hub serve` stops with one line
        self.sync_broker_auth()
        if s.mqtt_enabled:
            hub_login = self.auth is not None or self.dynsec is not None
            self.bridge = MqttBridge(
                host=s.mqtt_host,
                port=s.mqtt_port,
                username=HUB_USERNAME if hub_login else None,
                password=self.mqtt_password if hub_login else None,
                topic_root=s.topic_root,
                share_group=s.mqtt_share_group,
                engine=self.engine,
                clock=self.clock,
                metrics=self.metrics,
                protocol=s.mqtt_protocol,
                on_devices_changed=lambda _ids: self.rollouts.wake.set(),
            )
            self.rollouts.publish = self.bridge.publish_desired
            self._tell_bridge(leader=False)
        self.metrics.leader.set(0)
        self.leadership.on_change(self._on_leadership)
        self.leadership.start()  # its first round is synchronous: the bridge connects knowing whether it leads
        if self.bridge is not None:
            self.bridge.start()

    def stop(self) -> None:
        """Step down (singleton jobs stop), leave the election, then stop the bridge and the database pool."""
        self.leadership.stop()
        self._stop_jobs()  # in case a leadership callback failed half-way
        if self.bridge is not None:
            self.bridge.stop()
        if self.dynsec is not None:
            self.dynsec.close()
        self.engine.dispose()
        self._release()

    def _release(self) -> None:
        """Give back what __post_init__ took: the lease connection, or the data dir (SQLite)."""
        self.leadership.stop()
        if self._dir_lock is not None:
            self._dir_lock.release()

    # ---- leadership ---------------------------------------------------------------------------
    def _on_leadership(self, leader: bool) -> None:
        self.metrics.leader.set(1 if leader else 0)
        if leader:
            self._start_jobs()
        else:
            self._stop_jobs()
        self._tell_bridge(leader=leader)

    def _tell_bridge(self, *, leader: bool) -> None:
        """The bridge takes the leader-only subscriptions (all of them on MQTT 3.1.1) while told it leads."""
        set_leader: Callable[[bool], None] | None = getattr(self.bridge, "set_leader", None)
        if set_leader is not None:
            set_leader(leader)

    def _start_jobs(self) -> None:
        s = self.settings
        with self._jobs_lock:
            stop = self._jobs_stop = threading.Event()
            takeover = isinstance(self.leadership, LeaderLease)
            self._jobs = [
                self._spawn("hub-rollouts", lambda: self._run_rollouts(stop, takeover=takeover)),
                self._spawn("hub-tuf-refresh", lambda: self._refresh_tuf(stop)),
                self._spawn("hub-telemetry", lambda: self.telemetry.run(stop, s.telemetry_eval_s)),
            ]

    def _stop_jobs(self) -> None:
        with self._jobs_lock:
            self._jobs_stop.set()
            self.rollouts.wake.set()
            for t in self._jobs:
                t.join(timeout=JOB_JOIN_S)
                if t.is_alive():
                    log.warning("%s still busy %.0f s after stepping down; it ends after this pass", t.name, JOB_JOIN_S)
            self._jobs = []

    @staticmethod
    def _spawn(name: str, target: Callable[[], None]) -> threading.Thread:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        return t

    def _run_rollouts(self, stop: threading.Event, *, takeover: bool) -> None:
        if takeover:
            self._republish_pending()
        self.rollouts.run(stop, self.settings.rollout_tick_s)

    def _republish_pending(self) -> None:
        """A new leader re-sends the desired states devices have not applied: the last leader may have died
        between committing a wave and publishing it, and this replica's bridge only resyncs on (re)connect."""
        if self.bridge is None:
            return
        try:
            with self.engine.connect() as conn:
                pending = device_store.out_of_sync(conn=conn)
        except SQLAlchemyError:
            log.exception("new leader: could not read pending desired states; the bridge resyncs on reconnect")
            return
        states = []
        for row in pending:
            try:
                states.append(DesiredState.model_validate(row["desired"]))
            except ValidationError:
                log.exception("stored desired state of %s is invalid", row["id"])
        self.bridge.publish_desired(states)
        log.info("new leader: republished %d desired states not yet applied", len(states))

    def _refresh_tuf(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                with locks.held(self.engine, locks.TUF_PUBLISH):  # replicas share the repository (a push may sign)
                    resigned = self.repo.refresh_expiring()
                if resigned:
                    log.info("re-signed TUF metadata: %s", ", ".join(resigned))
            except (HubError, SQLAlchemyError):
                log.exception("TUF refresh failed")
            stop.wait(self.settings.tuf_refresh_s)


def _hash_in_file(password_file: Path, user: str) -> str | None:
    """`user`'s hash in a Mosquitto password file, if the file and the line exist."""
    try:
        lines = password_file.read_text().splitlines()
    except FileNotFoundError:
        return None
    return next((line.split(":", 1)[1] for line in lines if line.startswith(f"{user}:")), None)


def _hash_matches(hashed: str, password: str) -> bool:
    """Whether a `$7$<iter>$<salt>$<hash>` line (security.mosquitto_hash) is of `password`."""
    parts = hashed.split("$")
    if len(parts) != 5 or parts[1] != "7" or not parts[2].isdigit():
        return False
    try:
        salt, digest = base64.b64decode(parts[3], validate=True), base64.b64decode(parts[4], validate=True)
    except ValueError:
        return False
    if not digest:
        return False
    mine = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, int(parts[2]), len(digest))
    return hmac.compare_digest(mine, digest)
