"""Pipeline versions: one row per (name, version, profile), immutable once stored (hub/pipelines.py checks)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from hub.db.schema import pipeline_versions


def get(*, conn: Connection, name: str, version: int, profile: str) -> dict[str, Any] | None:
    """One stored (name, version, profile), or None."""
    row = conn.execute(
        select(pipeline_versions).where(
            pipeline_versions.c.name == name,
            pipeline_versions.c.version == version,
            pipeline_versions.c.profile == profile,
        )
    ).first()
    return dict(row._mapping) if row else None


def of_version(*, conn: Connection, name: str, version: int) -> list[dict[str, Any]]:
    """Every profile stored for one pipeline version, by profile."""
    q = (
        select(pipeline_versions)
        .where(pipeline_versions.c.name == name, pipeline_versions.c.version == version)
        .order_by(pipeline_versions.c.profile)
    )
    return [dict(r._mapping) for r in conn.execute(q)]


def add(
    *,
    conn: Connection,
    now: datetime,
    name: str,
    version: int,
    profile: str,
    spec: str,
    manifest: str,
    manifest_sha256: str,
    pipeline_target: str,
) -> None:
    """Insert one version/profile (the caller checked immutability)."""
    conn.execute(
        insert(pipeline_versions).values(
            name=name,
            version=version,
            profile=profile,
            spec=spec,
            manifest=manifest,
            manifest_sha256=manifest_sha256,
            pipeline_target=pipeline_target,
            created_at=now,
        )
    )


def list_versions(*, conn: Connection, name: str | None = None) -> list[dict[str, Any]]:
    """Every stored version/profile, optionally of one pipeline; by name, newest version first, then profile."""
    q = select(pipeline_versions).order_by(
        pipeline_versions.c.name, pipeline_versions.c.version.desc(), pipeline_versions.c.profile
    )
    if name is not None:
        q = q.where(pipeline_versions.c.name == name)
    return [dict(r._mapping) for r in conn.execute(q)]
