"""Devices: list, show, regroup/retag (admin); a device may read its own record and desired state."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from sqlalchemy import update

from hub.api.deps import AdminDep, ConnDep, HubDep, PrincipalDep
from hub.db.schema import devices
from hub.errors import NotFound
from hub.schemas import DevicePublic, DeviceUpdate, Message
from hub.store import audit
from hub.store import devices as device_store
from hub.store import events as event_store
from protocol.base import Identifier
from protocol.http import API_PREFIX

router = APIRouter(
    prefix=f"{API_PREFIX}/devices",
    tags=["devices"],
    responses={401: {"model": Message}, 403: {"model": Message}, 404: {"model": Message}},
)


def to_public(row: dict[str, Any]) -> DevicePublic:
    """Row -> API view, with current (reported) and desired versions per model and per pipeline."""
    reported, wanted = row["reported"] or {}, row["desired"] or {}
    current = {m["name"]: m.get("active_version") for m in reported.get("models", [])}
    desired = {m["name"]: m["version"] for m in wanted.get("models", [])}
    pipelines = {p["name"]: p.get("active_version") for p in reported.get("pipelines", [])}
    desired_pipelines = {p["name"]: p["version"] for p in wanted.get("pipelines", [])}
    return DevicePublic(
        id=row["id"], profile=row["profile"], group=row["group_name"], tags=row["tags"] or {}, online=row["online"],
        last_seen=row["last_seen"], agent_version=row["agent_version"], current_versions=current,
        desired_versions=desired, current_pipelines=pipelines, desired_pipelines=desired_pipelines,
        shadowing={s["name"]: s["version"] for s in wanted.get("shadows", [])},
        desired_generation=row["desired_generation"], applied_generation=row["applied_generation"],
        enrolled_at=row["enrolled_at"],
    )  # fmt: skip


def _device(conn: ConnDep, device_id: str) -> dict[str, Any]:
    row = device_store.get(conn=conn, device_id=device_id)
    if row is None:
        raise NotFound(f"no device {device_id!r}")
    return row


@router.get("", response_model=list[DevicePublic])
def list_devices(
    conn: ConnDep,
    _actor: AdminDep,
    group: Identifier | None = None,
    profile: Identifier | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> list[DevicePublic]:
    """Devices by id, optionally one group or profile."""
    rows = device_store.list_devices(conn=conn, group=group, profile=profile, limit=limit, offset=offset)
    return [to_public(r) for r in rows]


@router.get("/{device_id}", response_model=DevicePublic)
def get_device(device_id: Identifier, conn: ConnDep, who: PrincipalDep) -> DevicePublic:
    """One device (admin, or the device itself)."""
    who.require_device(device_id)
    return to_public(_device(conn, device_id))


@router.get("/{device_id}/desired", response_model=dict[str, Any])
def get_desired(device_id: Identifier, conn: ConnDep, who: PrincipalDep) -> dict[str, Any]:
    """The desired state last published to the device (HTTP fallback to the retained MQTT message)."""
    who.require_device(device_id)
    desired: dict[str, Any] | None = _device(conn, device_id)["desired"]
    if desired is None:
        raise NotFound(f"device {device_id!r} has no desired state yet")
    return desired


@router.get("/{device_id}/events", response_model=list[dict[str, Any]])
def get_events(
    device_id: Identifier, conn: ConnDep, _actor: AdminDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[dict[str, Any]]:
    """Newest events first."""
    _device(conn, device_id)
    return [r["payload"] for r in event_store.list_for_device(conn=conn, device_id=device_id, limit=limit)]


@router.patch("/{device_id}", response_model=DevicePublic)
def update_device(
    device_id: Identifier, body: DeviceUpdate, hub: HubDep, conn: ConnDep, actor: AdminDep
) -> DevicePublic:
    """Move a device to a group or replace its tags."""
    _device(conn, device_id)
    values = body.model_dump(exclude_unset=True)
    if "group" in values:
        values["group_name"] = values.pop("group")
    if values:
        conn.execute(update(devices).where(devices.c.id == device_id).values(**values))
        audit.record(conn=conn, now=hub.clock(), actor=actor, action="device.update", target=device_id,
                     details=body.model_dump(exclude_unset=True))  # fmt: skip
    return to_public(_device(conn, device_id))


@router.delete("/{device_id}", status_code=204, response_class=Response)
def decommission_device(device_id: Identifier, hub: HubDep, actor: AdminDep) -> Response:
    """Revoke the device: its token stops working, its broker account is removed (the broker drops it)."""
    accounts = hub.dynsec
    with hub.engine.begin() as conn:
        if not device_store.delete_device(conn=conn, device_id=device_id):
            raise NotFound(f"no device {device_id!r}")
        hub.sync_broker_auth(conn)
        if accounts is not None:  # dynsec: the broker drops the device at once; if it refuses, the device stays
            accounts.remove_device(device_id)
        audit.record(conn=conn, now=hub.clock(), actor=actor, action="device.decommission", target=device_id)
    hub.sync_broker_auth()  # committed view (see Hub.sync_broker_auth)
    if hub.bridge is not None:
        hub.bridge.clear_desired(device_id)
    return Response(status_code=204)
