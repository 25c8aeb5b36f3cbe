"""Two replicas' rollout engines on one PostgreSQL database: a verb racing a tick, ticks racing each other."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select

from hub.db.schema import audit_log
from hub.errors import Conflict
from hub.rollouts.engine import RolloutEngine
from hub.rollouts.machine import RolloutEvent, RolloutState
from hub.schemas import RolloutCreate
from hub.security import mosquitto_hash
from hub.store import devices as device_store
from hub.store import models as model_store
from hub.store import rollouts as rollout_store
from protocol.messages import DesiredState
from tests.hub.test_engine import FakeClock, report_serving

pytestmark = [pytest.mark.postgres, pytest.mark.integration]


def seed(engine: Engine, devices: int) -> None:
    now = datetime(2026, 11, 25, tzinfo=UTC)
    with engine.begin() as conn:
        model_store.add(conn=conn, now=now, name="m", version=1, profile="p", manifest="{}",
                        manifest_sha256="0" * 64, manifest_target="t", artifact_target="a",
                        artifact_sha256="1" * 64, artifact_size=1)  # fmt: skip
        for i in range(devices):
            device_store.create_device(conn=conn, now=now, device_id=f"d{i}", profile="p", group="g", tags={},
                                       token_sha256=f"{i:064d}", mqtt_password_hash=mosquitto_hash("x"),
                                       agent_version="t")  # fmt: skip


def engine_audit(engine: Engine) -> list[tuple[str, str, dict[str, object]]]:
    with engine.connect() as conn:
        rows = conn.execute(select(audit_log.c.actor, audit_log.c.action, audit_log.c.details).order_by(audit_log.c.id))
        return [(r.actor, r.action, r.details) for r in rows if r.actor.startswith("engine")]


def test_a_pause_from_another_replica_between_the_leaders_read_and_write_wins(
    pg: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(pg, 4)
    clock, published = FakeClock(), list[DesiredState]()
    leader = RolloutEngine(engine=pg, clock=clock, publish=published.extend)
    other = RolloutEngine(engine=pg, clock=clock, publish=published.extend)
    leader.create(RolloutCreate(id="r", model="m", version=1, canary_percent=25, stages=[100], probation_s=60),
                  actor="op")  # fmt: skip
    report_serving(pg, clock, published[0].device_id, published[0].generation)
    leader.tick()  # the canary is serving: probation starts
    clock.advance(61)  # ...and is over: the next tick would release wave 1
    real = rollout_store.with_unfinished_members

    def pause_meanwhile(*, conn: object) -> set[str]:
        other.command("r", RolloutEvent.PAUSE, actor="op")  # committed on "replica B" after the leader's listing
        return real(conn=conn)  # type: ignore[arg-type]

    monkeypatch.setattr(rollout_store, "with_unfinished_members", pause_meanwhile)
    leader.tick()
    with pg.connect() as conn:
        row = rollout_store.get(conn=conn, rollout_id="r")
    assert row is not None and row["state"] == "paused" and row["current_wave"] == 0
    assert len(published) == 1  # wave 1 was not released behind the operator's back


def test_stale_writes_are_refused_by_the_transition_count_and_the_wave(pg: Engine) -> None:
    seed(pg, 2)
    engine = RolloutEngine(engine=pg, clock=FakeClock())
    engine.create(RolloutCreate(id="r", model="m", version=1, canary_percent=50, stages=[100]), actor="op")
    now = datetime.now(UTC)
    with pg.begin() as conn:
        row = rollout_store.get(conn=conn, rollout_id="r")
        assert row is not None and row["transitions"] == 1
        rollout_store.set_wave(conn=conn, now=now, rollout_id="r", wave=1)
        with pytest.raises(Conflict):
            rollout_store.set_wave(conn=conn, now=now, rollout_id="r", wave=1)  # wave 0 -> 1 happens once
        with pytest.raises(Conflict):
            rollout_store.set_state(conn=conn, now=now, rollout_id="r", state=RolloutState.PAUSED, reason="stale",
                                    seen_transitions=0)  # fmt: skip


def test_two_engines_ticking_at_once_advance_each_wave_exactly_once(pg: Engine) -> None:
    seed(pg, 8)
    clock = FakeClock()
    published: list[DesiredState] = []
    engines = [RolloutEngine(engine=pg, clock=clock, publish=published.extend) for _ in range(2)]
    for i, e in enumerate(engines):
        e.actor = f"engine@replica-{i}"
    engines[0].create(RolloutCreate(id="r", model="m", version=1, canary_percent=25, stages=[50, 100],
                                    probation_s=0), actor="op")  # fmt: skip
    stop = threading.Event()
    errors: list[BaseException] = []

    def hammer(engine: RolloutEngine) -> None:
        while not stop.is_set():
            try:
                engine.tick()
            except BaseException as e:  # collected and asserted below
                errors.append(e)
                return

    threads = [threading.Thread(target=hammer, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    reported: set[int] = set()
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            for state in list(published):
                if id(state) not in reported:
                    reported.add(id(state))
                    report_serving(pg, clock, state.device_id, state.generation)
            clock.advance(1)
            with pg.connect() as conn:
                row = rollout_store.get(conn=conn, rollout_id="r")
            if row is not None and row["state"] == "completed":
                break
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    assert row is not None and row["state"] == "completed"
    actions = [(action, details.get("from"), details.get("to")) for _a, action, details in engine_audit(pg)]
    assert actions == [("rollout.wave", 0, 1), ("rollout.wave", 1, 2), ("rollout.all_waves_passed", None, None)]
    assert sorted(s.device_id for s in published) == [f"d{i}" for i in range(8)]  # each released once
