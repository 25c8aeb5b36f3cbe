"""Tables and indexes of the telemetry package (migration 0004), on the hub's shared metadata."""

from __future__ import annotations

from sqlalchemy import JSON, Column, Float, Index, Integer, String, Table, Text

from hub.db.schema import UtcDateTime, metadata, telemetry

# Cohort queries select one model version over a time range, newest first.
Index("ix_telemetry_version_end", telemetry.c.model, telemetry.c.version, telemetry.c.window_end)

drift_alerts = Table(
    "drift_alerts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("model", String(64), nullable=False),
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
