"""The hub's tables (SQLAlchemy Core). Changes here need a migration in hub/db/migrations/versions."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import OID
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import false
from sqlalchemy.types import TypeDecorator

metadata = MetaData()


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite stores it naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


model_versions = Table(
    "model_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("profile", String(64), nullable=False),
    Column("manifest", Text, nullable=False),
    Column("manifest_sha256", String(64), nullable=False),
    Column("manifest_target", String(512), nullable=False),
    Column("artifact_target", String(512), nullable=False),
    Column("artifact_sha256", String(64), nullable=False),
    Column("artifact_size", BigInteger, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    UniqueConstraint("name", "version", "profile", name="uq_model_version_profile"),
)

# Pipeline versions (protocol/pipeline.py): one row per (name, version, profile), immutable like model versions;
# `manifest` is the signed PipelineManifest of that profile (stage manifest targets, end-to-end golden cases).
pipeline_versions = Table(
    "pipeline_versions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("profile", String(64), nullable=False),
    Column("spec", Text, nullable=False),
    Column("manifest", Text, nullable=False),
    Column("manifest_sha256", String(64), nullable=False),
    Column("pipeline_target", String(512), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    UniqueConstraint("name", "version", "profile", name="uq_pipeline_version_profile"),
)

enrollment_tokens = Table(
    "enrollment_tokens",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("uses_left", Integer, nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Column("group_name", String(64), nullable=True),
    Column("tags", JSON, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)

devices = Table(
    "devices",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("profile", String(64), nullable=False),
    Column("group_name", String(64), nullable=True),
    Column("tags", JSON, nullable=False),
    Column("token_sha256", String(64), nullable=False, unique=True),
    Column("mqtt_password_hash", String(256), nullable=False),
    Column("agent_version", String(64), nullable=False),
    Column("online", Boolean, nullable=False, default=False),
    Column("last_seen", UtcDateTime(), nullable=True),
    Column("reported", JSON, nullable=True),
    Column("desired", JSON, nullable=True),
    Column("desired_generation", Integer, nullable=False, default=0),
    Column("applied_generation", Integer, nullable=False, default=0),
    Column("enrolled_at", UtcDateTime(), nullable=False),
)

events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device_id", String(64), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("ts", UtcDateTime(), nullable=False),
    Column("model", String(64), nullable=True),
    Column("version", Integer, nullable=True),
    Column("rollout_id", String(64), nullable=True),
    Column("payload", JSON, nullable=False),
    UniqueConstraint("device_id", "seq", name="uq_event_device_seq"),
)

rollouts = Table(
    "rollouts",
    metadata,
    Column("id", String(64), primary_key=True),
    # What the rollout ships: a model version or a pipeline version ("model" is the model's or pipeline's name).
    Column("kind", String(16), nullable=False, server_default="model"),
    Column("model", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("current_wave", Integer, nullable=False, default=0),
    Column("transitions", Integer, nullable=False, default=0),
    Column("reason", Text, nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
)

rollout_devices = Table(
    "rollout_devices",
    metadata,
    Column("rollout_id", String(64), primary_key=True),
    Column("device_id", String(64), primary_key=True),
    Column("wave", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("previous_version", Integer, nullable=True),
    Column("released_at", UtcDateTime(), nullable=True),
    Column("serving_seen_at", UtcDateTime(), nullable=True),
    Column("reason", Text, nullable=True),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("held", Boolean, nullable=False, server_default=false()),  # migration 0002
)
Index("ix_rollout_devices_device", rollout_devices.c.device_id)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", UtcDateTime(), nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(256), nullable=False),
    Column("details", JSON, nullable=False),
)

telemetry = Table(
    "telemetry",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("device_id", String(64), nullable=False),
    Column("msg_id", BigInteger, nullable=False),
    Column("model", String(80), nullable=False),  # protocol.telemetry.telemetry_key: a model, or pipeline:<name>
    Column("version", Integer, nullable=False),
    Column("window_start", UtcDateTime(), nullable=False),
    Column("window_end", UtcDateTime(), nullable=False),
    Column("summary", JSON, nullable=False),
    UniqueConstraint("device_id", "msg_id", name="uq_telemetry_device_msg"),
)
Index("ix_telemetry_model_version", telemetry.c.model, telemetry.c.version)

# storage_backend=postgresql (hub/storage/postgresql.py): TUF metadata and targets as large objects, by key.
# The table exists on SQLite too (one migration history); the backend refuses to run there.
blobs = Table(
    "blobs",
    metadata,
    Column("path", Text, primary_key=True),
    Column("oid", BigInteger().with_variant(OID(), "postgresql"), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
)
