"""Hub settings: one pydantic-settings class (env prefix EDGEFLEET_HUB_), built in main and passed down."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from protocol.topics import ROOT


class HubSettings(BaseSettings):
    """Everything the hub process needs; defaults give a working single-machine hub."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_HUB_", extra="forbid")

    data_dir: Path = Path("./hub-data")
    database_url: str | None = None  # default: SQLite file (WAL) in data_dir
    public_url: str = "http://127.0.0.1:8080"
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    admin_token: str | None = None  # default: read from data_dir/admin_token (written by `hub init`)
    # MQTT: the broker devices connect to, and how the hub connects to it.
    mqtt_enabled: bool = True
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    mqtt_public_host: str | None = None  # host handed to devices; default mqtt_host
    mqtt_public_port: int | None = Field(default=None, ge=1, le=65535)  # port handed to devices; default mqtt_port
    mqtt_public_tls: bool = False  # devices connect with TLS (deploy/mosquitto.conf: 8883)
    mqtt_protocol: Literal["auto", "5", "3.1.1"] = "auto"
    topic_root: str = ROOT
    # Mosquitto auth files the hub writes; a pid file to SIGHUP after a validated change.
    mosquitto_password_file: Path | None = None
    mosquitto_acl_file: Path | None = None
    mosquitto_pid_file: Path | None = None
    mosquitto_binary: str = "/usr/sbin/mosquitto"
    # Cluster (docs/hub.md#cluster): replicas on one PostgreSQL database and one broker.
    leader_poll_s: float = Field(default=1.0, gt=0)  # how often a replica tries for (or checks) the leader lease
    mqtt_share_group: str = Field(default="edgefleet-hub", pattern=r"^[A-Za-z0-9_-]{1,64}$")  # $share/<group>/...
    broker_auth: Literal["files", "dynsec"] = "files"  # Mosquitto password/ACL files + SIGHUP, or dynamic security
    # TUF metadata and artifacts (hub/storage/): files under data_dir/tuf, or large objects in PostgreSQL.
    storage_backend: Literal["directory", "postgresql"] = "directory"
    # Background jobs.
    rollout_tick_s: float = Field(default=1.0, gt=0)
    tuf_refresh_s: float = Field(default=300.0, gt=0)
    # Telemetry monitor (docs/telemetry.md): gauges and drift alerts over the last window.
    telemetry_eval_s: float = Field(default=30.0, gt=0)
    telemetry_window_s: float = Field(default=3600.0, gt=0)
    telemetry_alert_min_n: int = Field(default=500, ge=1)
    # Retention (hub/telemetry/retention.py): raw windows once rolled up, hourly rollups, device events.
    # At least a day, and keep raw/events above the agents' outbox_max_age_s (7 days by default).
    telemetry_raw_retention_s: float = Field(default=14 * 86400, ge=86400)
    telemetry_hourly_retention_s: float = Field(default=400 * 86400, ge=86400)
    events_retention_s: float = Field(default=90 * 86400, ge=86400)
    max_upload_bytes: int = Field(default=512 * 1024 * 1024, gt=0)  # an admin's model push (streamed to disk)
    # Request guard (hub/guard.py): limits every client meets before the hub spends memory, disk or CPU on it.
    max_json_bytes: int = Field(default=1024 * 1024, gt=0)  # any other request body (JSON, forms)
    header_timeout_s: float = Field(default=10.0, gt=0)  # a request's head must arrive whole within this
    body_timeout_s: float = Field(default=30.0, gt=0)  # a small body whole within this; an upload never stalls longer
    # TLS (docs/hub.md#security): serve HTTPS; optionally ask devices for client certificates from a CA.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None  # clients may present a certificate this CA signed (mTLS)...
    tls_require_client_cert: bool = False  # ...and must, when this is true
    metrics_token: str | None = None  # /metrics requires `Authorization: Bearer <metrics_token>` when set

    def resolved_database_url(self) -> str:
        """The configured URL, or the SQLite file in the data dir."""
        return self.database_url or f"sqlite:///{(self.data_dir / 'hub.db').resolve()}"

    @property
    def tuf_dir(self) -> Path:
        return self.data_dir / "tuf"

    @property
    def admin_token_file(self) -> Path:
        return self.data_dir / "admin_token"

    @property
    def mqtt_password_file(self) -> Path:
        """The hub's own broker password (username `edgefleet-hub`)."""
        return self.data_dir / "mqtt_hub_password"
