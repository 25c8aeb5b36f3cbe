"""Rollouts: create, list, show progress per wave and device, pause, resume, abort, roll back."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Body

from hub.api.deps import AdminDep, ConnDep, HubDep
from hub.errors import NotFound
from hub.rollouts import shadow as shadow_phase
from hub.rollouts.machine import RolloutEvent
from hub.schemas import Message, RolloutCreate, RolloutDevicePublic, RolloutPublic, RolloutScope, WaveProgress
from hub.store import rollouts as rollout_store
from protocol.base import Identifier
from protocol.http import API_PREFIX

router = APIRouter(
    prefix=f"{API_PREFIX}/rollouts",
    tags=["rollouts"],
    responses={401: {"model": Message}, 404: {"model": Message}, 409: {"model": Message}},
)


def _public(conn: ConnDep, row: dict[str, Any], with_devices: bool) -> RolloutPublic:
    members = rollout_store.members(conn=conn, rollout_id=row["id"])
    waves = []
    for wave, _size in enumerate(row["spec"].get("wave_sizes", [])):
        in_wave = [m for m in members if m["wave"] == wave]
        waves.append(
            WaveProgress(
                wave=wave, total=len(in_wave), released=wave <= row["current_wave"] and row["state"] != "scheduled",
                counts=dict(Counter(m["state"] for m in in_wave)),
                shadow=shadow_phase.view(conn, row, wave, [m["device_id"] for m in in_wave]),
            )
        )  # fmt: skip
    devices = None
    if with_devices:
        devices = [
            RolloutDevicePublic(device_id=m["device_id"], wave=m["wave"], state=m["state"], held=m["held"],
                                previous_version=m["previous_version"], reason=m["reason"])
            for m in members
        ]  # fmt: skip
    return RolloutPublic(
        id=row["id"], kind=row.get("kind") or "model", model=row["model"], version=row["version"], state=row["state"],
        current_wave=row["current_wave"], reason=row["reason"], spec=row["spec"], waves=waves, devices=devices,
        created_at=row["created_at"], updated_at=row["updated_at"],
    )  # fmt: skip


def _show(hub: HubDep, rollout_id: str, with_devices: bool = True) -> RolloutPublic:
    with hub.engine.connect() as conn:
        row = rollout_store.get(conn=conn, rollout_id=rollout_id)
        if row is None:
            raise NotFound(f"no rollout {rollout_id!r}")
        return _public(conn, row, with_devices)


@router.post("", response_model=RolloutPublic, status_code=201, responses={422: {"model": Message}})
def create_rollout(body: RolloutCreate, hub: HubDep, actor: AdminDep) -> RolloutPublic:
    """Plan waves over the target and (by default) start at once."""
    rollout_id = hub.rollouts.create(body, actor=actor)
    return _show(hub, rollout_id)


@router.get("", response_model=list[RolloutPublic])
def list_rollouts(conn: ConnDep, _actor: AdminDep) -> list[RolloutPublic]:
    """Every rollout with per-wave counts (no per-device rows)."""
    return [_public(conn, r, with_devices=False) for r in rollout_store.list_rollouts(conn=conn)]


@router.get("/{rollout_id}", response_model=RolloutPublic)
def get_rollout(rollout_id: Identifier, hub: HubDep, _actor: AdminDep) -> RolloutPublic:
    """Progress per wave and per device."""
    return _show(hub, rollout_id)


def _verb(event: RolloutEvent) -> Any:
    def handler(
        rollout_id: Identifier, hub: HubDep, actor: AdminDep, scope: Annotated[RolloutScope | None, Body()] = None
    ) -> RolloutPublic:
        hub.rollouts.command(rollout_id, event, actor=actor, scope=scope)
        return _show(hub, rollout_id)

    handler.__doc__ = f"{event.value.capitalize()} the rollout, or (pause/resume/abort) one group or device."
    handler.__name__ = f"{event.value}_rollout"
    return handler


for _event in (RolloutEvent.PAUSE, RolloutEvent.RESUME, RolloutEvent.ABORT, RolloutEvent.START):
    router.post(f"/{{rollout_id}}/{_event.value}", response_model=RolloutPublic)(_verb(_event))


@router.post("/{rollout_id}/rollback", response_model=RolloutPublic)
def rollback_rollout(
    rollout_id: Identifier, hub: HubDep, actor: AdminDep, scope: Annotated[RolloutScope | None, Body()] = None
) -> RolloutPublic:
    """Desired state returns to the previous version: the whole rollout, one group, or one device."""
    hub.rollouts.command(rollout_id, RolloutEvent.ROLLBACK, actor=actor, scope=scope)
    return _show(hub, rollout_id)
