"""The rollout engine: creates rollouts, applies operator verbs, and advances waves on each tick.

Every change is persisted (one transaction) before desired states are published, so a hub killed at
any instant resumes from the database; the MQTT bridge republishes desired states devices have not
applied yet whenever it (re)connects.

Replicas (docs/hub.md#cluster): ticks run on the leader only, operator verbs and enrollments on any replica.
Every transaction that changes a rollout first locks its row (SELECT ... FOR UPDATE) and works from what it
reads then, and a state change or wave advance is also conditional on the row not having moved
(`transitions`, `current_wave`): a stale leader or a concurrent verb can never advance a wave twice.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select

from hub.cluster import locks
from hub.db.schema import pipeline_versions
from hub.errors import Conflict, InvalidInput, NotFound
from hub.rollouts import members as membership
from hub.rollouts import planner
from hub.rollouts import shadow as shadow_phase
from hub.rollouts.evaluate import evaluate_members
from hub.rollouts.gates import GATES
from hub.rollouts.machine import (
    LIVE_STATES,
    ROLLBACK_EVENTS,
    TERMINAL_DEVICE_STATES,
    DeviceState,
    RolloutEvent,
    RolloutState,
    next_state,
)
from hub.schemas import RolloutCreate, RolloutScope, RolloutTarget
from hub.store import audit
from hub.store import devices as device_store
from hub.store import models as model_store
from hub.store import rollouts as rollout_store
from hub.tuf_repo import Clock
from protocol.messages import DesiredState

log = logging.getLogger(__name__)
HOLD_EVENTS = {RolloutEvent.PAUSE, RolloutEvent.RESUME, RolloutEvent.ABORT}
Publisher = Callable[[list[DesiredState]], None]


class RolloutEngine:
    """Persisted, clock-driven rollout state machine; thread-safe."""

    def __init__(self, *, engine: Engine, clock: Clock, publish: Publisher | None = None) -> None:
        self.engine = engine
        self.clock = clock
        self.publish: Publisher = publish or (lambda _states: None)
        self.actor = "engine"  # who the audit log names for wave advances and engine-made transitions
        self._lock = threading.RLock()
        self.wake = threading.Event()

    # ---- operator verbs -------------------------------------------------------------------------
    def create(self, spec: RolloutCreate, *, actor: str) -> str:
        """Plan waves over the matching devices that have an artifact for their profile; start if asked."""
        rollout_id = spec.id or f"r-{secrets.token_hex(4)}"
        now = self.clock()
        with self._lock, self.engine.begin() as conn:
            locks.xact_lock(conn, locks.ROLLOUT_CREATE)  # the overlap check sees every other replica's create
            profiles = _profiles_of(conn, spec.kind, spec.name, spec.version)
            if not profiles:
                raise NotFound(f"{spec.kind} {spec.name} version {spec.version} is not in the registry")
            if spec.shadow is not None and spec.kind != "model":
                raise InvalidInput("shadow tests are not available for pipeline rollouts yet; leave out shadow")
            if spec.kind == "pipeline" and "drift" in spec.gates:
                raise InvalidInput("the drift gate judges one model's inputs against its baseline; a pipeline has "
                                   "none of its own (its stages' drift shows per stage): use latency, error_rate, "
                                   "fallback_rate and self_test")  # fmt: skip
            unknown = [g for g in spec.gates if g not in GATES]
            if unknown:
                raise InvalidInput(f"unknown health gate(s) {unknown}; known: {sorted(GATES)}")
            fleet = [d for d in device_store.list_devices(conn=conn) if planner.matches(spec.target, d)]
            eligible = [d for d in fleet if d["profile"] in profiles]
            self._refuse_overlap(conn, spec.kind, spec.name, {d["id"] for d in eligible})
            sizes = planner.wave_sizes(len(eligible), spec.canary_percent, spec.stages)
            waves = planner.assign_waves(rollout_id, [d["id"] for d in eligible], sizes)
            members = [(d["id"], waves[d["id"]], planner.current_version(d, spec.name, spec.kind)) for d in eligible]
            stored = spec.model_dump(mode="json") | {"wave_sizes": sizes, "profiles": sorted(profiles)}
            rollout_store.create(
                conn=conn, now=now, rollout_id=rollout_id, model=spec.name, version=spec.version,
                spec=stored, members=members, kind=spec.kind,
            )  # fmt: skip
            audit.record(conn=conn, now=now, actor=actor, action="rollout.create", target=rollout_id, details=stored)
        if spec.start:
            self.command(rollout_id, RolloutEvent.START, actor=actor)
        return rollout_id

    def command(
        self, rollout_id: str, event: RolloutEvent, *, actor: str, scope: RolloutScope | None = None
    ) -> RolloutState:
        """Apply an operator verb (start, pause, resume, abort, rollback of all, a group or a device)."""
        published: list[DesiredState] = []
        with self._lock, self.engine.begin() as conn:
            row = self._get(conn, rollout_id, lock=True)
            state = RolloutState(row["state"])
            now = self.clock()
            partial = scope is not None and (scope.group or scope.device_id)
            if event is RolloutEvent.ROLLBACK and partial:
                assert scope is not None
                published = membership.rollback_members(conn, row, now, group=scope.group, device_id=scope.device_id)
            elif event in HOLD_EVENTS and partial:
                assert scope is not None
                published = membership.hold(conn, row, now, event, scope, actor)
            else:
                state = self._transition(conn, row, event, now, reason=f"{event.value} by {actor}")
                if event in ROLLBACK_EVENTS or state is RolloutState.ABORTED:
                    published = membership.end_shadow(conn, row, now, f"{event.value} by {actor}")
                if event in ROLLBACK_EVENTS:
                    published += membership.rollback_members(conn, row, now)
                elif state is RolloutState.RUNNING:
                    if event is RolloutEvent.RESUME:
                        membership.acknowledge_failures(conn, row, now)
                        self._accept_shadow(conn, row, now, actor)
                    published = membership.release(conn, row, now)
            details = scope.model_dump(exclude_none=True) if scope else {}
            audit.record(
                conn=conn,
                now=now,
                actor=actor,
                action=f"rollout.{event.value}",
                target=rollout_id,
                details=details,
            )
        self.publish(published)
        self.wake.set()
        return state

    # ---- engine findings ------------------------------------------------------------------------
    def tick(self) -> None:
        """Evaluate every live rollout once: device states, timeouts, thresholds, next wave."""
        with self._lock:
            with self.engine.connect() as conn:
                live = rollout_store.list_rollouts(conn=conn, states=[s.value for s in LIVE_STATES])
                unfinished = rollout_store.with_unfinished_members(conn=conn)
            for listed in live:
                if listed["state"] == RolloutState.COMPLETED.value and listed["id"] not in unfinished:
                    continue  # nothing left to watch (late devices join through adopt_device)
                published: list[DesiredState] = []
                try:
                    with self.engine.begin() as conn:
                        row = rollout_store.get(conn=conn, rollout_id=listed["id"], for_update=True)
                        if row is not None and RolloutState(row["state"]) in LIVE_STATES:
                            published = self._advance(conn, row, self.clock())
                except Conflict as e:  # moved by someone else between our read and our write: look again next tick
                    log.info("rollout %s: %s", listed["id"], e)
                    continue
                self.publish(published)

    def adopt_device(self, device_id: str) -> None:
        """A newly enrolled device joins every live rollout whose target it matches, in the current wave."""
        published: list[DesiredState] = []
        with self._lock, self.engine.begin() as conn:
            device = device_store.get(conn=conn, device_id=device_id)
            if device is None:
                return
            now = self.clock()
            mine = rollout_store.rollouts_of_device(conn=conn, device_id=device_id)
            adopted: set[tuple[str, str]] = set()  # one rollout per model or pipeline: the newest live one that matches
            for listed in reversed(rollout_store.list_rollouts(conn=conn, states=[s.value for s in LIVE_STATES])):
                spec = listed["spec"]
                target = RolloutTarget.model_validate(spec["target"])
                unit = (listed.get("kind") or "model", listed["model"])
                if listed["id"] in mine or device["profile"] not in spec["profiles"] or unit in adopted:
                    continue
                if not planner.matches(target, device):
                    continue
                row = rollout_store.get(conn=conn, rollout_id=listed["id"], for_update=True)  # its wave, now
                if row is None or RolloutState(row["state"]) not in LIVE_STATES:
                    continue
                adopted.add(unit)
                members = [(device_id, row["current_wave"], planner.current_version(device, row["model"], unit[0]))]
                rollout_store.add_members(conn=conn, now=now, rollout_id=row["id"], members=members)
                if row["state"] != RolloutState.PAUSED.value:
                    published += membership.release(conn, row, now)
                    device = device_store.get(conn=conn, device_id=device_id) or device
        self.publish(published)

    def run(self, stop: threading.Event, interval_s: float) -> None:
        """Tick until `stop` is set; ingest wakes it early through `self.wake`."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:
                log.exception("rollout tick failed; retrying next interval")
            self.wake.wait(interval_s)
            self.wake.clear()

    # ---- internals ------------------------------------------------------------------------------
    def _refuse_overlap(self, conn: Connection, kind: str, model: str, device_ids: set[str]) -> None:
        """Two unfinished rollouts of one model (or pipeline) must not steer the same device."""
        active = [RolloutState.SCHEDULED.value, RolloutState.RUNNING.value, RolloutState.PAUSED.value]
        for row in rollout_store.list_rollouts(conn=conn, states=active):
            if (row.get("kind") or "model", row["model"]) != (kind, model):
                continue
            shared = device_ids & {m["device_id"] for m in rollout_store.members(conn=conn, rollout_id=row["id"])}
            if shared:
                raise Conflict(
                    f"{len(shared)} of these devices (e.g. {min(shared)}) are in {row['state']} rollout "
                    f"{row['id']!r} of {model}; abort or finish it first"
                )

    def _get(self, conn: Connection, rollout_id: str, *, lock: bool = False) -> dict[str, Any]:
        row = rollout_store.get(conn=conn, rollout_id=rollout_id, for_update=lock)
        if row is None:
            raise NotFound(f"no rollout {rollout_id!r}")
        return row

    def _transition(
        self, conn: Connection, row: dict[str, Any], event: RolloutEvent, now: datetime, reason: str | None
    ) -> RolloutState:
        state = next_state(RolloutState(row["state"]), event)
        rollout_store.set_state(conn=conn, now=now, rollout_id=row["id"], state=state, reason=reason,
                                seen_transitions=row["transitions"])  # fmt: skip
        row["state"], row["transitions"] = state.value, row["transitions"] + 1
        log.info("rollout %s: %s -> %s (%s)", row["id"], event.value, state.value, reason)
        return state

    def _advance(self, conn: Connection, row: dict[str, Any], now: datetime) -> list[DesiredState]:
        members = rollout_store.members(conn=conn, rollout_id=row["id"])
        changes = evaluate_members(conn, row, members, now)
        rollout_store.update_members(conn=conn, rollout_id=row["id"], changes=changes)
        by_id = {m["device_id"]: m for m in members}
        for ch in changes:
            by_id[ch["device_id"]].update(ch)
        if row["state"] != RolloutState.RUNNING.value:
            return []
        published = membership.release(conn, row, now)
        spec, wave = row["spec"], row["current_wave"]
        if not shadow_phase.activates(row, wave):
            return published + self._shadow_step(conn, row, members, now)
        acknowledged = set(spec.get("acknowledged_failures", []))
        in_wave = [
            m
            for m in members
            if m["wave"] == wave
            and m["state"] != DeviceState.ROLLED_BACK.value
            and not (m["state"] == DeviceState.FAILED.value and m["device_id"] in acknowledged)
            and not (m["held"] and m["released_at"] is None)
        ]
        failed = sum(m["state"] == DeviceState.FAILED.value for m in in_wave)
        healthy = sum(m["state"] == DeviceState.HEALTHY.value for m in in_wave)
        n = len(in_wave)
        done = all(m["state"] in TERMINAL_DEVICE_STATES for m in in_wave)
        if n and (failed / n > spec["error_threshold"] or (done and healthy / n < spec["success_threshold"])):
            reason = f"wave {wave}: {failed}/{n} failed, {healthy}/{n} healthy"
            first = next((m for m in in_wave if m["state"] == DeviceState.FAILED.value and m["reason"]), None)
            reason += f" (e.g. {first['device_id']}: {first['reason']})" if first else ""
            if spec["auto_rollback"]:
                self._finding(conn, row, RolloutEvent.AUTO_ROLLBACK, now, reason)
                return published + membership.rollback_members(conn, row, now)
            self._finding(conn, row, RolloutEvent.ERROR_THRESHOLD, now, reason)
            return published
        if n == 0 or healthy / n >= spec["success_threshold"]:
            if wave + 1 >= len(spec["wave_sizes"]):
                if any(m["held"] and m["released_at"] is None for m in members):
                    return published  # a held group or device still waits for resume
                self._finding(conn, row, RolloutEvent.ALL_WAVES_PASSED, now, f"{healthy}/{n} healthy")
                return published
            rollout_store.set_wave(conn=conn, now=now, rollout_id=row["id"], wave=wave + 1)
            row["current_wave"] = wave + 1
            audit.record(conn=conn, now=now, actor=self.actor, action="rollout.wave", target=row["id"],
                         details={"from": wave, "to": wave + 1, "healthy": healthy, "total": n})  # fmt: skip
            log.info("rollout %s: wave %d -> %d (%d/%d healthy)", row["id"], wave, wave + 1, healthy, n)
            return published + membership.release(conn, row, now)
        return published

    def _shadow_step(
        self, conn: Connection, row: dict[str, Any], members: list[dict[str, Any]], now: datetime
    ) -> list[DesiredState]:
        """Judge the current wave's shadow evidence: activate the wave, keep collecting, or pause / roll back."""
        shadow = shadow_phase.spec_of(row)
        wave = row["current_wave"]
        record = shadow_phase.wave_record(row, wave)
        if shadow is None or record is None or record.get("verdict") != "collecting":
            return []  # not started (every member held) or already decided: a failed phase waits for an operator
        in_wave = [m["device_id"] for m in members if m["wave"] == wave]
        found = shadow_phase.evidence(conn, row, in_wave)
        started = datetime.fromisoformat(record["started_at"])
        verdict, reason = shadow_phase.judge(shadow, found, len(in_wave), started, now)
        if verdict == "collecting":
            return []
        spec = shadow_phase.set_wave_record(row, wave, verdict=verdict, reason=reason, decided_at=now.isoformat())
        rollout_store.set_spec(conn=conn, now=now, rollout_id=row["id"], spec=spec)
        audit.record(conn=conn, now=now, actor=self.actor, action=f"rollout.shadow_{verdict}", target=row["id"],
                     details={"wave": wave, "reason": reason})  # fmt: skip
        log.info("rollout %s: wave %d shadow %s (%s)", row["id"], wave, verdict, reason)
        if verdict == "passed":
            return membership.release(conn, row, now)
        published = membership.end_shadow(conn, row, now, reason)
        if row["spec"]["auto_rollback"]:
            self._finding(conn, row, RolloutEvent.AUTO_ROLLBACK, now, f"wave {wave}: {reason}")
            return published + membership.rollback_members(conn, row, now)
        self._finding(conn, row, RolloutEvent.ERROR_THRESHOLD, now, f"wave {wave}: {reason}")
        return published

    def _accept_shadow(self, conn: Connection, row: dict[str, Any], now: datetime, actor: str) -> None:
        """Resuming after a failed shadow phase activates that wave on the operator's word (audited)."""
        wave = row["current_wave"]
        record = shadow_phase.wave_record(row, wave)
        if record is None or record.get("verdict") != "failed":
            return
        spec = shadow_phase.set_wave_record(row, wave, verdict="accepted", accepted_by=actor)
        rollout_store.set_spec(conn=conn, now=now, rollout_id=row["id"], spec=spec)
        audit.record(conn=conn, now=now, actor=actor, action="rollout.shadow_accepted", target=row["id"],
                     details={"wave": wave, "reason": record.get("reason")})  # fmt: skip

    def _finding(self, conn: Connection, row: dict[str, Any], event: RolloutEvent, now: datetime, reason: str) -> None:
        """A transition the engine decided on its own, audited under the engine's (replica's) name."""
        self._transition(conn, row, event, now, reason)
        audit.record(conn=conn, now=now, actor=self.actor, action=f"rollout.{event.value}", target=row["id"],
                     details={"reason": reason, "wave": row["current_wave"]})  # fmt: skip


def _profiles_of(conn: Connection, kind: str, name: str, version: int) -> set[str]:
    """Profiles a model version was converted for, or a pipeline version was pushed for."""
    if kind == "model":
        return model_store.profiles_of(conn=conn, name=name, version=version)
    q = select(pipeline_versions.c.profile).where(
        pipeline_versions.c.name == name, pipeline_versions.c.version == version
    )
    return {r[0] for r in conn.execute(q)}
