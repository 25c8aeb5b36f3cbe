"""Model versions in the registry: one row per (name, version, profile), immutable once stored."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select

from hub.db.schema import model_versions


def get(*, conn: Connection, name: str, version: int, profile: str) -> dict[str, Any] | None:
    """One stored (name, version, profile), or None."""
    row = conn.execute(
        select(model_versions).where(
            model_versions.c.name == name,
            model_versions.c.version == version,
            model_versions.c.profile == profile,
        )
    ).first()
    return dict(row._mapping) if row else None


def add(
    *,
    conn: Connection,
    now: datetime,
    name: str,
    version: int,
    profile: str,
    manifest: str,
    manifest_sha256: str,
    manifest_target: str,
    artifact_target: str,
    artifact_sha256: str,
    artifact_size: int,
) -> None:
    """Insert one version/profile (the caller checked immutability)."""
    conn.execute(
        insert(model_versions).values(
            name=name,
            version=version,
            profile=profile,
            manifest=manifest,
            manifest_sha256=manifest_sha256,
            manifest_target=manifest_target,
            artifact_target=artifact_target,
            artifact_sha256=artifact_sha256,
            artifact_size=artifact_size,
            created_at=now,
        )
    )


def list_versions(*, conn: Connection, name: str | None = None) -> list[dict[str, Any]]:
    """Every stored version/profile, optionally of one model; newest version first."""
    q = select(model_versions).order_by(model_versions.c.name, model_versions.c.version.desc())
    if name is not None:
        q = q.where(model_versions.c.name == name)
    return [dict(r._mapping) for r in conn.execute(q)]


def profiles_of(*, conn: Connection, name: str, version: int) -> set[str]:
    """Profiles a model version was converted for."""
    q = select(model_versions.c.profile).where(model_versions.c.name == name, model_versions.c.version == version)
    return {r[0] for r in conn.execute(q)}
