"""Tables and indexes of the telemetry package (migration 0004), on the hub's shared metadata."""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, Float, Index, Integer, String, Table, Text, UniqueConstraint
from sqlalchemy.sql import false

from hub.db.schema import UtcDateTime, events, metadata, telemetry

# Cohort queries select one model version over a time range, newest first.
Index("ix_telemetry_version_end", telemetry.c.model, telemetry.c.version, telemetry.c.window_end)

drift_alerts = Table(
    "drift_alerts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(80), nullable=False),  # telemetry key (hub/db/schema.py telemetry)
    Column("version", Integer, nullable=False),
    Column("cohort", String(200), nullable=False),  # "fleet", "profile:<p>" or "group:<g>"
    Column("state", String(16), nullable=False),  # open | resolved
    Column("opened_at", UtcDateTime(), nullable=False),
    Column("last_seen_at", UtcDateTime(), nullable=False),
    Column("resolved_at", UtcDateTime(), nullable=True),
    Column("score", Float, nullable=False),
    Column("n", Integer, nullable=False),
    Column("drifted_features", JSON, nullable=False),
    Column("reason", Text, nullable=False),
)
Index("ix_drift_alerts_key", drift_alerts.c.model, drift_alerts.c.version, drift_alerts.c.cohort, drift_alerts.c.state)

# Migration 0005: raw rows remember they were folded into `telemetry_hourly` (the column lives here, with the
# rollups, so the ingest path stays untouched: inserts leave it to its server default).
telemetry.append_column(Column("rolled_up", Boolean, nullable=False, server_default=false()))
Index("ix_telemetry_rolled_up", telemetry.c.rolled_up, telemetry.c.id)

telemetry_hourly = Table(
    "telemetry_hourly",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(80), nullable=False),  # telemetry key (hub/db/schema.py telemetry)
    Column("version", Integer, nullable=False),
    Column("profile", String(64), nullable=False),  # the summaries' profile
    Column("hour", UtcDateTime(), nullable=False),  # windows whose window_start falls in [hour, hour + 1 h)
    Column("window_start", UtcDateTime(), nullable=False),
    Column("window_end", UtcDateTime(), nullable=False),
    Column("rows", Integer, nullable=False),
    Column("skipped", Integer, nullable=False),
    Column("summary", JSON, nullable=False),
    UniqueConstraint("model", "version", "profile", "hour", name="uq_telemetry_hourly"),
)
Index("ix_telemetry_hourly_version_hour", telemetry_hourly.c.model, telemetry_hourly.c.version, telemetry_hourly.c.hour)

# Migration 0006: retention (retention.py) finds rows past their age through these.
Index("ix_telemetry_window_end", telemetry.c.window_end)
Index("ix_events_ts", events.c.ts)
Index("ix_telemetry_hourly_window_end", telemetry_hourly.c.window_end)
