"""The rollout engine with an injected clock on SQLite and PostgreSQL: probation, timeouts, thresholds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from hub.db.engine import make_engine, upgrade
from hub.errors import Conflict, InvalidTransition, NotFound
from hub.rollouts.engine import RolloutEngine
from hub.rollouts.machine import TRANSITIONS, RolloutEvent, RolloutState
from hub.schemas import RolloutCreate, RolloutScope, RolloutTarget
from hub.security import mosquitto_hash
from hub.store import devices as device_store
from hub.store import events as event_store
from hub.store import models as model_store
from hub.store import rollouts as rollout_store
from protocol.messages import DesiredState, LifecycleState, ReportedModel, ReportedState


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def db(db_url: str) -> Engine:
    engine = make_engine(db_url)
    upgrade(engine)
    upgrade(engine)  # idempotent
    now = datetime(2026, 11, 25, tzinfo=UTC)
    with engine.begin() as conn:
        model_store.add(conn=conn, now=now, name="m", version=1, profile="p", manifest="{}",
                        manifest_sha256="0" * 64, manifest_target="t", artifact_target="a",
                        artifact_sha256="1" * 64, artifact_size=1)  # fmt: skip
        for i in range(4):
            device_store.create_device(conn=conn, now=now, device_id=f"d{i}", profile="p", group="g", tags={},
                                       token_sha256=f"{i}" * 64, mqtt_password_hash=mosquitto_hash("x"),
                                       agent_version="t")  # fmt: skip
    return engine


def report_serving(engine: Engine, clock: FakeClock, device_id: str, generation: int) -> None:
    model = ReportedModel(name="m", active_version=1, target_version=1, state=LifecycleState.COMMITTED,
                          self_test_passed=True)  # fmt: skip
    state = ReportedState(device_id=device_id, profile="p", applied_generation=generation, models=[model],
                          agent_version="t", reported_at=clock())  # fmt: skip
    with engine.begin() as conn:
        device_store.record_reported(
            conn=conn, now=clock(), device_id=device_id, reported=state.model_dump(mode="json")
        )


def test_probation_then_next_wave_then_timeout_pauses(db: Engine) -> None:
    clock, published = FakeClock(), []
    engine = RolloutEngine(engine=db, clock=clock, publish=lambda states: published.extend(states))
    spec = RolloutCreate(id="r", model="m", version=1, canary_percent=25, stages=[100], probation_s=60,
                         timeout_s=300, success_threshold=1.0, error_threshold=0.0)  # fmt: skip
    engine.create(spec, actor="test")
    assert len(published) == 1 and isinstance(published[0], DesiredState)
    canary = published[0].device_id
    assert published[0].models[0].manifest_target == "models/m/1/p/manifest.json"
    report_serving(db, clock, canary, published[0].generation)
    engine.tick()
    assert len(published) == 1  # in probation: the next wave waits
    clock.advance(61)
    engine.tick()
    assert len(published) == 4
    for state in published[1:3]:
        report_serving(db, clock, state.device_id, state.generation)
    clock.advance(301)
    engine.tick()
    with db.connect() as conn:
        row = rollout_store.get(conn=conn, rollout_id="r")
        members = {m["device_id"]: m for m in rollout_store.members(conn=conn, rollout_id="r")}
    assert row is not None and row["state"] == "paused" and "1/3 failed" in row["reason"]
    silent = published[3].device_id
    assert members[silent]["state"] == "failed" and "300s" in members[silent]["reason"]
    with pytest.raises(InvalidTransition):
        engine.command("r", RolloutEvent.PAUSE, actor="t")
    with pytest.raises(NotFound):
        engine.command("nope", RolloutEvent.PAUSE, actor="t")


def test_unknown_model_and_gate_are_refused(db: Engine) -> None:
    engine = RolloutEngine(engine=db, clock=FakeClock())
    with pytest.raises(NotFound):
        engine.create(RolloutCreate(model="m", version=9), actor="t")
    with pytest.raises(Exception, match="unknown health gate"):
        engine.create(RolloutCreate(model="m", version=1, gates=["p95_latency"]), actor="t")


def test_transition_table_has_one_way_into_each_terminal_state() -> None:
    into = {state: {e for (_s, e), t in TRANSITIONS.items() if t is state} for state in RolloutState}
    assert into[RolloutState.ROLLED_BACK] == {RolloutEvent.ROLLBACK, RolloutEvent.AUTO_ROLLBACK}
    assert into[RolloutState.COMPLETED] == {RolloutEvent.ALL_WAVES_PASSED}
    assert not into[RolloutState.SCHEDULED]


def test_pause_and_resume_one_device_holds_its_release(db: Engine) -> None:
    clock, published = FakeClock(), []
    engine = RolloutEngine(engine=db, clock=clock, publish=lambda states: published.extend(states))
    engine.create(RolloutCreate(id="h", model="m", version=1, canary_percent=0, start=False), actor="t")
    engine.command("h", RolloutEvent.PAUSE, actor="t", scope=RolloutScope(device_id="d2"))
    engine.command("h", RolloutEvent.START, actor="t")
    assert sorted(s.device_id for s in published) == ["d0", "d1", "d3"]
    for state in list(published):
        report_serving(db, clock, state.device_id, state.generation)
    for _ in range(2):
        clock.advance(61)
        engine.tick()
    with db.connect() as conn:
        assert rollout_store.get(conn=conn, rollout_id="h")["state"] == "running"  # type: ignore[index]
        states = {m["device_id"]: m["state"] for m in rollout_store.members(conn=conn, rollout_id="h")}
    assert states == {"d0": "healthy", "d1": "healthy", "d2": "pending", "d3": "healthy"}
    engine.command("h", RolloutEvent.RESUME, actor="t", scope=RolloutScope(device_id="d2"))
    assert published[-1].device_id == "d2"
    report_serving(db, clock, "d2", published[-1].generation)
    engine.tick()
    clock.advance(61)
    engine.tick()
    with db.connect() as conn:
        assert rollout_store.get(conn=conn, rollout_id="h")["state"] == "completed"  # type: ignore[index]
    with pytest.raises(NotFound):
        engine.command("h", RolloutEvent.PAUSE, actor="t", scope=RolloutScope(group="nope"))


def test_failure_events_of_other_rollouts_do_not_count(db: Engine) -> None:
    clock, published = FakeClock(), []
    engine = RolloutEngine(engine=db, clock=clock, publish=lambda states: published.extend(states))
    old = {"device_id": "d0", "kind": "rolled_back", "ts": clock(), "model": "m", "version": 1, "payload": {}}
    mine = {"device_id": "d1", "kind": "refused", "ts": clock(), "model": "m", "version": 1,
            "payload": {"reason": "bad signature"}}  # fmt: skip
    with db.begin() as conn:
        event_store.insert_new(conn=conn, rows=[{**old, "seq": 1, "rollout_id": "older"},
                                                {**mine, "seq": 1, "rollout_id": "f"}])  # fmt: skip
    engine.create(RolloutCreate(id="f", model="m", version=1, canary_percent=0, probation_s=0), actor="t")
    for state in published:
        if state.device_id != "d1":
            report_serving(db, clock, state.device_id, state.generation)
    engine.tick()
    with db.connect() as conn:
        states = {m["device_id"]: (m["state"], m["reason"]) for m in rollout_store.members(conn=conn, rollout_id="f")}
    assert states["d0"] == ("healthy", None)
    assert states["d1"] == ("failed", "refused: bad signature")


def test_overlapping_unfinished_rollouts_of_one_model_are_refused(db: Engine) -> None:
    engine = RolloutEngine(engine=db, clock=FakeClock())
    engine.create(RolloutCreate(id="a", model="m", version=1, target=RolloutTarget(devices=["d0", "d1"])), actor="t")
    with pytest.raises(Conflict, match="rollout 'a'"):
        engine.create(RolloutCreate(id="b", model="m", version=1, target=RolloutTarget(devices=["d1"])), actor="t")
    engine.create(RolloutCreate(id="c", model="m", version=1, target=RolloutTarget(devices=["d2"])), actor="t")
    engine.command("a", RolloutEvent.ABORT, actor="t")
    engine.create(RolloutCreate(id="d", model="m", version=1, target=RolloutTarget(devices=["d1"])), actor="t")
