"""Devices and enrollment tokens: enrol, look up by token, record reported state and status."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, insert, select, update

from hub.db.schema import devices, enrollment_tokens
from hub.errors import AuthError, Conflict


def create_enrollment_token(
    *,
    conn: Connection,
    now: datetime,
    token_sha256: str,
    uses: int,
    expires_at: datetime,
    group: str | None,
    tags: dict[str, str],
) -> str:
    """Store a new enrollment token (by hash); returns its public id."""
    token_id = secrets.token_hex(8)
    conn.execute(
        insert(enrollment_tokens).values(
            id=token_id,
            token_sha256=token_sha256,
            uses_left=uses,
            expires_at=expires_at,
            group_name=group,
            tags=tags,
            created_at=now,
        )
    )
    return token_id


def consume_enrollment_token(*, conn: Connection, now: datetime, token_sha256: str) -> dict[str, Any]:
    """Use up one use of a token atomically; AuthError if unknown, expired or used up."""
    row = conn.execute(select(enrollment_tokens).where(enrollment_tokens.c.token_sha256 == token_sha256)).first()
    if row is None:
        raise AuthError("unknown enrollment token")
    if row.expires_at <= now:
        raise AuthError("enrollment token expired")
    done = conn.execute(
        update(enrollment_tokens)
        .where(and_(enrollment_tokens.c.id == row.id, enrollment_tokens.c.uses_left > 0))
        .values(uses_left=enrollment_tokens.c.uses_left - 1)
    )
    if done.rowcount != 1:
        raise AuthError("enrollment token used up")
    return dict(row._mapping)


def list_enrollment_tokens(*, conn: Connection) -> list[dict[str, Any]]:
    """Every token (hashes only), newest first."""
    rows = conn.execute(select(enrollment_tokens).order_by(enrollment_tokens.c.created_at.desc()))
    return [dict(r._mapping) for r in rows]


def create_device(
    *,
    conn: Connection,
    now: datetime,
    device_id: str,
    profile: str,
    group: str | None,
    tags: dict[str, str],
    token_sha256: str,
    mqtt_password_hash: str,
    agent_version: str,
) -> None:
    """Insert a device; Conflict if the id is taken."""
    if get(conn=conn, device_id=device_id) is not None:
        raise Conflict(f"device {device_id!r} is already enrolled")
    conn.execute(
        insert(devices).values(
            id=device_id,
            profile=profile,
            group_name=group,
            tags=tags,
            token_sha256=token_sha256,
            mqtt_password_hash=mqtt_password_hash,
            agent_version=agent_version,
            online=False,
            desired_generation=0,
            applied_generation=0,
            enrolled_at=now,
        )
    )


def get(*, conn: Connection, device_id: str) -> dict[str, Any] | None:
    """One device row, or None."""
    row = conn.execute(select(devices).where(devices.c.id == device_id)).first()
    return dict(row._mapping) if row else None


def by_token(*, conn: Connection, token_sha256: str) -> dict[str, Any] | None:
    """The device a bearer token belongs to."""
    row = conn.execute(select(devices).where(devices.c.token_sha256 == token_sha256)).first()
    return dict(row._mapping) if row else None


def list_devices(
    *,
    conn: Connection,
    group: str | None = None,
    profile: str | None = None,
    ids: Iterable[str] | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Devices ordered by id, optionally filtered by group, profile or ids."""
    q = select(devices).order_by(devices.c.id).offset(offset)
    if group is not None:
        q = q.where(devices.c.group_name == group)
    if profile is not None:
        q = q.where(devices.c.profile == profile)
    if ids is not None:
        q = q.where(devices.c.id.in_(list(ids)))
    if limit is not None:
        q = q.limit(limit)
    return [dict(r._mapping) for r in conn.execute(q)]


def password_hashes(*, conn: Connection) -> dict[str, str]:
    """device id -> Mosquitto password hash, for the broker's password file."""
    return {r.id: r.mqtt_password_hash for r in conn.execute(select(devices.c.id, devices.c.mqtt_password_hash))}


def record_reported(*, conn: Connection, now: datetime, device_id: str, reported: dict[str, Any]) -> bool:
    """Store a reported state; False if the device is unknown."""
    done = conn.execute(
        update(devices)
        .where(devices.c.id == device_id)
        .values(
            reported=reported,
            last_seen=now,
            applied_generation=int(reported.get("applied_generation", 0)),
            online=True,
        )
    )
    return done.rowcount == 1


def record_status(*, conn: Connection, now: datetime, device_id: str, online: bool) -> bool:
    """Online/offline from the status topic (offline is the broker's last will)."""
    done = conn.execute(update(devices).where(devices.c.id == device_id).values(online=online, last_seen=now))
    return done.rowcount == 1


def out_of_sync(*, conn: Connection) -> list[dict[str, Any]]:
    """Devices whose applied generation is behind their desired one (republished on reconnect)."""
    q = select(devices.c.id, devices.c.desired).where(
        devices.c.desired.is_not(None), devices.c.applied_generation < devices.c.desired_generation
    )
    return [dict(r._mapping) for r in conn.execute(q)]


def set_desired_many(*, conn: Connection, states: list[tuple[str, dict[str, Any], int]]) -> None:
    """Batch of (device id, desired state, generation), written in id order (the lock order of every writer of
    device rows: see hub/mqtt/ingest.py)."""
    if not states:
        return
    stmt = (
        update(devices)
        .where(devices.c.id == bindparam("b_id"))
        .values(desired=bindparam("b_desired"), desired_generation=bindparam("b_gen"))
    )
    conn.execute(stmt, [{"b_id": d, "b_desired": s, "b_gen": g} for d, s, g in sorted(states, key=lambda t: t[0])])


def delete_device(*, conn: Connection, device_id: str) -> bool:
    """Remove a device and its unfinished rollout memberships; False if unknown."""
    from hub.db.schema import rollout_devices

    unfinished = rollout_devices.c.state.not_in(["healthy", "failed", "rolled_back"])
    conn.execute(delete(rollout_devices).where(rollout_devices.c.device_id == device_id, unfinished))
    return conn.execute(delete(devices).where(devices.c.id == device_id)).rowcount == 1
