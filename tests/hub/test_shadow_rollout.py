"""A rollout's shadow phase in the engine (SQLite and PostgreSQL, injected clock): shadow windows arrive through the
hub's real ingest (`store_batch`) as devices send them; the wave activates, keeps collecting, pauses or rolls back.

Devices are simulated here (their desired states are read, their shadow events written through ingest); real
agents shadowing a real candidate over a real broker: tests/hub/test_shadow_e2e.py.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import Engine

from hub.api.routes.rollouts import _public
from hub.mqtt.ingest import IngestBatch, store_batch
from hub.rollouts import shadow as shadow_phase
from hub.rollouts.engine import RolloutEngine
from hub.rollouts.machine import RolloutEvent
from hub.schemas import RolloutCreate, ShadowSpec
from hub.security import mosquitto_hash
from hub.store import audit
from hub.store import devices as device_store
from hub.store import rollouts as rollout_store
from protocol.messages import DesiredState, Event, EventKind
from protocol.shadow import ShadowSummary
from protocol.telemetry import LATENCY_BUCKETS_MS, latency_bucket
from tests.hub import test_engine
from tests.hub.test_engine import FakeClock, report_serving

db = test_engine.db  # the fixture: a database with model m v1 for profile p and devices d0-d3

SHADOW = ShadowSpec(fraction=0.5, min_samples=100, max_disagreement=0.05, max_latency_ratio=1.5, max_duration_s=600)


class Devices:
    """Simulated devices: what the hub last published to each, and shadow windows sent through ingest."""

    def __init__(self, engine: Engine, clock: FakeClock) -> None:
        self.engine, self.clock = engine, clock
        self.desired: dict[str, DesiredState] = {}
        self.seq: dict[str, int] = {}

    def publish(self, states: list[DesiredState]) -> None:
        for s in states:
            before = self.desired.get(s.device_id)
            assert before is None or s.generation > before.generation  # generations only grow
            self.desired[s.device_id] = s

    def shadowing(self) -> list[str]:
        return sorted(d for d, s in self.desired.items() if s.shadows)

    def serving(self) -> list[str]:
        return sorted(d for d, s in self.desired.items() if any(m.name == "m" for m in s.models))

    def send(self, device_id: str, samples: int, agreed: int, ms: tuple[float, ...] = (1.0, 1.0), **more: Any) -> None:
        """One shadow window of `samples` rows (each request one row), `ms` per request (serving, candidate)."""
        buckets = [[0] * (len(LATENCY_BUCKETS_MS) + 1) for _ in range(2)]
        for which, value in enumerate(ms):
            buckets[which][latency_bucket(value)] = samples
        window = ShadowSummary(
            model="m", version=1, kind="classifier", samples=samples, agreed=agreed, serving_ms_sum=samples * ms[0],
            candidate_ms_sum=samples * ms[1], serving_latency_buckets=buckets[0], candidate_latency_buckets=buckets[1],
            **more,
        )  # fmt: skip
        self.event(device_id, details=window.model_dump(mode="json"))

    def refuse(self, device_id: str, reason: str) -> None:
        self.event(device_id, reason=reason)

    def event(self, device_id: str, **fields: Any) -> None:
        self.seq[device_id] = self.seq.get(device_id, 0) + 1
        rollout_id = self.desired[device_id].shadows[0].rollout_id
        event = Event(device_id=device_id, seq=self.seq[device_id], kind=EventKind.SHADOW, ts=self.clock(), model="m",
                      version=1, rollout_id=rollout_id, **fields)  # fmt: skip
        store_batch(engine=self.engine, batch=IngestBatch(events=[event, event]), now=self.clock())  # resent: once


def setup(db: Engine, **spec: Any) -> tuple[RolloutEngine, Devices, FakeClock]:
    clock = FakeClock()
    devices = Devices(db, clock)
    engine = RolloutEngine(engine=db, clock=clock, publish=devices.publish)
    args: dict[str, Any] = {"id": "r", "model": "m", "version": 1, "canary_percent": 25, "stages": [100],
                            "probation_s": 0, "shadow": SHADOW} | spec  # fmt: skip
    engine.create(RolloutCreate(**args), actor="test")
    return engine, devices, clock


def rollout(db: Engine) -> dict[str, Any]:
    with db.connect() as conn:
        row = rollout_store.get(conn=conn, rollout_id="r")
    assert row is not None
    return row


def test_an_agreeing_candidate_is_shadowed_then_activates_wave_by_wave(db: Engine) -> None:
    engine, devices, clock = setup(db)
    assert len(devices.shadowing()) == 1 and devices.serving() == []  # the canary shadows; nobody activates
    canary = devices.shadowing()[0]
    shadow = devices.desired[canary].shadows[0]
    assert (shadow.name, shadow.version, shadow.fraction, shadow.manifest_target) == ("m", 1, 0.5,
                                                                                       "models/m/1/p/manifest.json")
    devices.send(canary, 60, 60)
    engine.tick()
    assert devices.serving() == []  # 60 of 100 rows: still collecting
    with db.connect() as conn:
        collecting = _public(conn, rollout(db), with_devices=False).waves[0].shadow
    assert collecting is not None
    assert (collecting.verdict, collecting.samples, collecting.devices) == ("collecting", 60, 1)
    devices.send(canary, 60, 59)
    engine.tick()
    assert devices.serving() == [canary] and devices.shadowing() == []  # activated; its shadow ended
    record = rollout(db)["spec"]["shadow_waves"]["0"]
    assert record["verdict"] == "passed" and "120 rows, disagreement 0.8%, latency 1.00x" in record["reason"]
    report_serving(db, clock, canary, devices.desired[canary].generation)
    engine.tick()  # the canary is healthy: wave 1 starts with its own shadow phase
    others = sorted(set(devices.desired) - {canary})
    assert devices.shadowing() == others and devices.serving() == [canary]
    for d in others:
        devices.send(d, 40, 40)
    engine.tick()
    assert devices.serving() == sorted(devices.desired)  # 120 rows over 3 devices: the wave activates
    for d in others:
        report_serving(db, clock, d, devices.desired[d].generation)
    engine.tick()
    row = rollout(db)
    assert row["state"] == "completed"
    with db.connect() as conn:
        public = _public(conn, row, with_devices=False)
        actions = [a["action"] for a in audit.list_entries(conn=conn)]
    assert [w.shadow.samples if w.shadow else None for w in public.waves] == [120, 120]
    assert public.waves[1].shadow is not None and public.waves[1].shadow.devices == 3
    assert actions.count("rollout.shadow_passed") == 2


def test_a_disagreeing_candidate_pauses_before_any_device_activates_then_resume_accepts(db: Engine) -> None:
    engine, devices, _clock = setup(db, canary_percent=50)
    shadowing = devices.shadowing()
    assert len(shadowing) == 2
    for d in shadowing:
        devices.send(d, 50, 35)  # 30 % disagree
    engine.tick()
    row = rollout(db)
    assert row["state"] == "paused"
    assert "disagreement 30.0% over the 5.0% limit (100 rows" in row["reason"] and row["reason"].startswith("wave 0")
    assert devices.serving() == [] and devices.shadowing() == []  # nobody activated; the shadow tests ended
    with db.connect() as conn:
        members = rollout_store.members(conn=conn, rollout_id="r")
        public = _public(conn, row, with_devices=False)
    assert {m["state"] for m in members} == {"pending"}
    assert public.waves[0].shadow is not None and public.waves[0].shadow.verdict == "failed"
    assert public.waves[0].shadow.disagreement == pytest.approx(0.3)
    engine.command("r", RolloutEvent.RESUME, actor="alice")  # the operator accepts the evidence: the wave activates
    assert devices.serving() == shadowing
    record = rollout(db)["spec"]["shadow_waves"]["0"]
    assert (record["verdict"], record["accepted_by"]) == ("accepted", "alice") and "30.0%" in record["reason"]


def test_a_failed_shadow_rolls_back_when_asked_and_abort_ends_shadows(db: Engine) -> None:
    engine, devices, _clock = setup(db, auto_rollback=True)
    canary = devices.shadowing()[0]
    devices.send(canary, 100, 100, ms=(1.0, 5.0))  # agrees, but 5x slower
    engine.tick()
    row = rollout(db)
    assert row["state"] == "rolled_back" and "latency 5.00x over the 1.5x limit" in row["reason"]
    assert devices.shadowing() == [] and devices.serving() == []

    with db.begin() as conn:  # a second rollout of the same model, aborted mid-shadow
        for d in list(devices.desired):
            device_store.set_desired_many(conn=conn, states=[(d, devices.desired[d].model_dump(mode="json"),
                                                              devices.desired[d].generation)])  # fmt: skip
    engine.create(RolloutCreate(id="r2", model="m", version=1, canary_percent=25, shadow=SHADOW), actor="t")
    assert len(devices.shadowing()) == 1
    engine.command("r2", RolloutEvent.ABORT, actor="t")
    assert devices.shadowing() == []


def test_too_few_samples_in_time_or_no_device_able_to_shadow_pauses_with_the_reason(db: Engine) -> None:
    engine, devices, clock = setup(db)
    canary = devices.shadowing()[0]
    devices.send(canary, 30, 30)
    clock.advance(599)
    engine.tick()
    assert rollout(db)["state"] == "running"
    clock.advance(2)
    engine.tick()
    row = rollout(db)
    assert row["state"] == "paused" and "30 of the 100 rows needed within 600s" in row["reason"]

    with db.begin() as conn:
        rollout_store.set_state(conn=conn, now=clock(), rollout_id="r", state=rollout_store.RolloutState.ABORTED,
                                reason="t")  # fmt: skip
    engine.create(RolloutCreate(id="r2", model="m", version=1, canary_percent=25, shadow=SHADOW), actor="t")
    canary = devices.shadowing()[0]
    devices.refuse(canary, "RefusedArtifact: sha256 mismatch")
    engine.tick()
    with db.connect() as conn:
        row2 = rollout_store.get(conn=conn, rollout_id="r2")
    assert row2 is not None and row2["state"] == "paused"
    assert f"no device of the wave could run the candidate (e.g. {canary}: RefusedArtifact" in row2["reason"]


def test_candidate_errors_count_as_disagreement_and_bad_windows_are_left_out(db: Engine) -> None:
    engine, devices, _clock = setup(db)
    canary = devices.shadowing()[0]
    devices.event(canary, details={"model": "m", "version": 1, "kind": "classifier", "samples": 5, "agreed": 9})
    devices.send(canary, 90, 90, failed=10)
    engine.tick()
    row = rollout(db)
    assert row["state"] == "paused" and "disagreement 10.0%" in row["reason"] and "10 candidate errors" in row["reason"]


def test_shadow_specs_are_checked() -> None:
    with pytest.raises(ValidationError, match="pipeline rollouts"):
        RolloutCreate(pipeline="p", version=1, shadow=SHADOW)
    for bad in ({"fraction": 0}, {"fraction": 1.5}, {"min_samples": 0}, {"max_disagreement": 2}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            ShadowSpec.model_validate(bad)
    spec = ShadowSpec(min_samples=10)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert shadow_phase.judge(spec, shadow_phase.Evidence(), 2, start, start)[0] == "collecting"


def test_the_api_takes_and_shows_a_shadow_phase(tmp_path: Any, db_url: str) -> None:
    from hub.api.main import create_app
    from hub.settings import HubSettings

    settings = HubSettings(data_dir=tmp_path / "data", database_url=db_url, admin_token="t0ken-admin-secret",
                           mqtt_enabled=False)  # fmt: skip
    admin = {"Authorization": "Bearer t0ken-admin-secret"}
    with TestClient(create_app(settings, background=False)) as client:
        bad = client.post("/api/v1/rollouts", headers=admin,
                          json={"model": "m", "version": 1, "shadow": {"fraction": 2}})  # fmt: skip
        assert bad.status_code == 422 and "fraction" in bad.text
        pipeline = client.post("/api/v1/rollouts", headers=admin,
                               json={"pipeline": "p", "version": 1, "shadow": {"fraction": 0.5}})  # fmt: skip
        assert pipeline.status_code == 422 and "not available for pipeline rollouts" in pipeline.text


def _enroll(db: Engine, device_id: str, engine: RolloutEngine, clock: FakeClock) -> None:
    """A device enrolls while the rollout runs: the hub's enrollment creates it and has the engine adopt it."""
    token = hashlib.sha256(device_id.encode()).hexdigest()
    with db.begin() as conn:
        device_store.create_device(conn=conn, now=clock(), device_id=device_id, profile="p", group="g", tags={},
                                   token_sha256=token, mqtt_password_hash=mosquitto_hash("x"),
                                   agent_version="t")  # fmt: skip
    engine.adopt_device(device_id)


def test_a_device_enrolled_during_a_shadow_phase_shadows_and_one_enrolled_after_it_passed_activates(
    db: Engine,
) -> None:
    """docs/shadow.md: a device that enrolls during a wave's shadow phase joins it; one that joins after the wave
    passed activates directly. The newcomer's windows count toward the wave's evidence like the others'."""
    engine, devices, clock = setup(db)
    canary = devices.shadowing()
    assert len(canary) == 1 and devices.serving() == []  # wave 0 (the canary) is in its shadow phase
    _enroll(db, "late-shadow", engine, clock)
    assert devices.shadowing() == sorted([*canary, "late-shadow"]) and devices.serving() == []
    assert devices.desired["late-shadow"].shadows[0].rollout_id == "r"
    with db.connect() as conn:
        members = {m["device_id"]: m for m in rollout_store.members(conn=conn, rollout_id="r")}
    assert (members["late-shadow"]["wave"], members["late-shadow"]["state"]) == (0, "shadowing")
    devices.send("late-shadow", 60, 60)
    engine.tick()
    assert devices.serving() == []  # 60 of the 100 rows, all from the newcomer
    devices.send(canary[0], 60, 60)
    engine.tick()
    assert devices.serving() == sorted([*canary, "late-shadow"]) and devices.shadowing() == []
    record = rollout(db)["spec"]["shadow_waves"]["0"]
    assert record["verdict"] == "passed" and "120 rows" in record["reason"]
    assert rollout(db)["current_wave"] == 0  # the canary wave is still on probation
    _enroll(db, "late-active", engine, clock)  # its shadow phase passed: straight to the new version
    assert "late-active" in devices.serving() and "late-active" not in devices.shadowing()
    with db.connect() as conn:
        state = {m["device_id"]: (m["wave"], m["state"]) for m in rollout_store.members(conn=conn, rollout_id="r")}
    assert state["late-active"][0] == 0 and state["late-active"][1] != "shadowing"
