"""Telemetry gates for pipeline rollouts (engine, injected clock, SQLite and PostgreSQL): each device's end-to-end
pipeline windows (`unit` "pipeline", stored through the bridge's ingest under `pipeline:<name>`) against the
previous pipeline version's, exactly as a model's gates; a model of the same name is judged apart.

The windows are made here as the agent makes them (agent/telemetry/recorders.py `record_pipeline`, real code);
real agents sending them over a real broker: tests/agent/test_pipeline_daemon.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine

from agent.telemetry.recorders import Recorders
from hub.db.engine import make_engine, upgrade
from hub.errors import InvalidInput
from hub.mqtt.ingest import IngestBatch, store_batch
from hub.rollouts.engine import RolloutEngine
from hub.schemas import RolloutCreate
from hub.security import mosquitto_hash
from hub.store import devices as device_store
from hub.store import pipelines as pipeline_store
from hub.store import rollouts as rollout_store
from hub.telemetry.health import TelemetryLimits
from protocol.messages import LifecycleState, ReportedModel, ReportedState
from protocol.telemetry import TelemetryMessage

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture
def db(db_url: str) -> Engine:
    engine = make_engine(db_url)
    upgrade(engine)
    with engine.begin() as conn:
        for version in (1, 2):
            pipeline_store.add(conn=conn, now=T0, name="reader", version=version, profile="p", spec="{}",
                               manifest="{}", manifest_sha256=f"{version}" * 64, pipeline_target="t")  # fmt: skip
        for i in range(2):
            device_store.create_device(conn=conn, now=T0, device_id=f"d{i}", profile="p", group="g", tags={},
                                       token_sha256=f"{i}" * 64, mqtt_password_hash=mosquitto_hash("x"),
                                       agent_version="t")  # fmt: skip
    return engine


def serving(db: Engine, device_id: str, version: int, now: datetime) -> None:
    unit = ReportedModel(name="reader", active_version=version, target_version=version,
                         state=LifecycleState.COMMITTED, self_test_passed=True)  # fmt: skip
    state = ReportedState(device_id=device_id, profile="p", pipelines=[unit], agent_version="t", reported_at=now)
    with db.begin() as conn:
        device_store.record_reported(conn=conn, now=now, device_id=device_id, reported=state.model_dump(mode="json"))


class Windows:
    """End-to-end pipeline windows made by the agent's recorders, stored through the hub's ingest."""

    def __init__(self, db: Engine) -> None:
        self.db, self.next_id = db, 0

    def send(self, device_id: str, version: int, n: int, at: datetime, *, errors: int = 0, ms: float = 3.0,
             unit: str = "pipeline") -> None:  # fmt: skip
        recorders = Recorders(device_id, "p", window_size=10**6, window_seconds=3600, clock=at.timestamp)
        for i in range(n):
            if unit == "pipeline":
                recorders.record_pipeline("reader", version, ms=ms, ok=i >= errors)
            else:  # a model that happens to share the pipeline's name: fallback answers only
                recorders.record_no_model("reader", version, "no_local_model", ok=False)
        (summary,) = recorders.close(all_windows=True)
        self.next_id += 1
        batch = IngestBatch(telemetry=[TelemetryMessage(id=self.next_id, device_id=device_id, summary=summary)])
        store_batch(engine=self.db, batch=batch, now=at)


def members(db: Engine) -> dict[str, tuple[str, str | None]]:
    with db.connect() as conn:
        return {m["device_id"]: (m["state"], m["reason"]) for m in rollout_store.members(conn=conn, rollout_id="r2")}


def test_pipeline_gates_judge_end_to_end_windows_against_the_previous_version(db: Engine) -> None:
    now = T0
    windows = Windows(db)
    for d in ("d0", "d1"):
        serving(db, d, 1, now)
        windows.send(d, 1, 1000, now - timedelta(hours=1), errors=5)  # v1: 0.5 % errors, 3 ms
    windows.send("d0", 2, 5000, now - timedelta(minutes=30), unit="model")  # model "reader": all errors, apart
    engine = RolloutEngine(engine=db, clock=lambda: now)
    gates = ["self_test", "latency", "error_rate", "fallback_rate"]
    spec = RolloutCreate(id="r2", pipeline="reader", version=2, canary_percent=0, stages=[100], probation_s=0,
                         error_threshold=0.5, gates=gates, gate_limits=TelemetryLimits(min_inferences=200))  # fmt: skip
    engine.create(spec, actor="test")
    for d in ("d0", "d1"):
        serving(db, d, 2, now)
    engine.tick()
    state, reason = members(db)["d0"]
    assert state == "probation" and "waiting for telemetry (0/200 inferences)" in (reason or "")  # not the model's
    now += timedelta(minutes=1)
    windows.send("d0", 2, 300, now)
    windows.send("d1", 2, 300, now, errors=30, ms=30.0)  # 10 % errors, 10x slower
    engine.tick()
    got = members(db)
    assert got["d0"] == ("healthy", None)
    assert got["d1"] == ("failed", "latency: p95 48.5 ms > 1.5 x 4.85 ms of v1 on p")  # bucket bounds of 30 / 3 ms
    with db.connect() as conn:
        row = rollout_store.get(conn=conn, rollout_id="r2")
    assert row is not None and row["state"] == "paused"


def test_the_drift_gate_is_refused_for_pipelines_with_the_reason(db: Engine) -> None:
    engine = RolloutEngine(engine=db, clock=lambda: T0)
    with pytest.raises(InvalidInput, match="its stages' drift shows per stage"):
        engine.create(RolloutCreate(pipeline="reader", version=2, gates=["self_test", "drift"]), actor="t")
