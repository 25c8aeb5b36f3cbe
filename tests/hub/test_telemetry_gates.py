"""Telemetry health gates in the rollout engine (injected clock, SQLite and PostgreSQL), and each gate's rule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import Engine

from hub.db.engine import make_engine, upgrade
from hub.mqtt.ingest import IngestBatch, store_batch
from hub.rollouts.engine import RolloutEngine
from hub.schemas import RolloutCreate
from hub.security import mosquitto_hash
from hub.store import devices as device_store
from hub.store import models as model_store
from hub.store import rollouts as rollout_store
from hub.telemetry.health import CohortHealth, TelemetryLimits, judge
from protocol.drift import drift_report
from protocol.messages import LifecycleState, ReportedModel, ReportedState
from protocol.telemetry import TelemetryMessage
from tests.hub.support import make_manifest
from tests.hub.test_telemetry_data import baseline, sample, summarize

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
GATES = ["self_test", "latency", "error_rate", "fallback_rate", "drift"]


@pytest.fixture
def db(db_url: str) -> Engine:
    engine = make_engine(db_url)
    upgrade(engine)
    with engine.begin() as conn:
        for version in (1, 2):
            m = make_manifest("m", version, "p", b"a").model_copy(update={"baseline": baseline()})
            model_store.add(conn=conn, now=T0, name="m", version=version, profile="p", manifest=m.to_json(),
                            manifest_sha256=f"{version}" * 64, manifest_target="t", artifact_target="a",
                            artifact_sha256="1" * 64, artifact_size=1)  # fmt: skip
        for i in range(2):
            device_store.create_device(conn=conn, now=T0, device_id=f"d{i}", profile="p", group="g", tags={},
                                       token_sha256=f"{i}" * 64, mqtt_password_hash=mosquitto_hash("x"),
                                       agent_version="t")  # fmt: skip
    return engine


def _serving(db: Engine, device_id: str, version: int, now: datetime) -> None:
    model = ReportedModel(name="m", active_version=version, target_version=version, state=LifecycleState.COMMITTED,
                          self_test_passed=True)  # fmt: skip
    state = ReportedState(device_id=device_id, profile="p", models=[model], agent_version="t", reported_at=now)
    with db.begin() as conn:
        device_store.record_reported(conn=conn, now=now, device_id=device_id, reported=state.model_dump(mode="json"))


class Telemetry:
    """Windows stored through the bridge's ingest code."""

    def __init__(self, db: Engine) -> None:
        self.db, self.rng, self.base, self.next_id = db, np.random.default_rng(1), baseline(), 0

    def send(self, device_id: str, version: int, n: int, start: datetime, errors: int = 0) -> None:
        self.next_id += 1
        s = summarize(device_id, "p", "m", version, sample(self.rng, n), self.rng.uniform(1.2, 2.8, n),
                      base=self.base, errors=errors, start=start)  # fmt: skip
        batch = IngestBatch(telemetry=[TelemetryMessage(id=self.next_id, device_id=device_id, summary=s)])
        store_batch(engine=self.db, batch=batch, now=start)


def _members(db: Engine) -> dict[str, tuple[str, str | None]]:
    with db.connect() as conn:
        return {m["device_id"]: (m["state"], m["reason"]) for m in rollout_store.members(conn=conn, rollout_id="r2")}


def test_gates_wait_for_a_minimum_sample_then_pass_or_fail_against_the_previous_version(db: Engine) -> None:
    now = T0
    telemetry = Telemetry(db)
    for d in ("d0", "d1"):
        _serving(db, d, 1, now)
        telemetry.send(d, 1, 1000, now - timedelta(hours=1), errors=5)  # v1: 0.5 % errors
    engine = RolloutEngine(engine=db, clock=lambda: now)
    spec = RolloutCreate(id="r2", model="m", version=2, canary_percent=0, stages=[100], probation_s=0,
                         error_threshold=0.5, gates=GATES, gate_limits=TelemetryLimits(min_inferences=200))
    engine.create(spec, actor="test")
    for d in ("d0", "d1"):
        _serving(db, d, 2, now)
    engine.tick()
    states = _members(db)
    assert states["d0"][0] == "probation" and "waiting for telemetry (0/200 inferences)" in (states["d0"][1] or "")
    now += timedelta(minutes=1)
    telemetry.send("d0", 2, 150, now)
    telemetry.send("d1", 2, 300, now, errors=30)  # 10 % errors
    engine.tick()
    states = _members(db)
    assert states["d0"][0] == "probation" and "150/200" in (states["d0"][1] or "")
    assert states["d1"] == ("failed", "error_rate: 10.00% > 0.50% of v1 on p + 1.00%")
    now += timedelta(minutes=1)
    telemetry.send("d0", 2, 100, now)
    engine.tick()
    assert _members(db)["d0"] == ("healthy", None)
    with db.connect() as conn:
        row = rollout_store.get(conn=conn, rollout_id="r2")
    assert row is not None and row["state"] == "paused" and "error_rate: 10.00%" in row["reason"]


def _health(n: int = 500, p95: float | None = 4.0, errors: float = 0.0, fallback: float = 0.0,
            shift: str | None = None) -> CohortHealth:  # fmt: skip
    base = baseline()
    s = summarize("d", "p", "m", 1, sample(np.random.default_rng(n), n, shift), np.full(n, 2.0), base=base)
    return CohortHealth(n, p95, errors, fallback, drift_report(base, s))


@pytest.mark.parametrize(("key", "new", "old", "limits", "verdict", "words"), [
    ("latency", _health(p95=6.9), _health(p95=4.7), {}, True, None),
    ("latency", _health(p95=7.1), _health(p95=4.7), {}, False, "1.5 x 4.7 ms of v1"),
    ("latency", _health(p95=0.675), _health(p95=0.35), {}, True, None),  # 1.9x, but within the 1 ms slack
    ("latency", _health(p95=0.675), _health(p95=0.35), {"latency_p95_slack_ms": 0}, False, "1.5 x 0.35 ms"),
    ("latency", _health(p95=30.0), None, {"latency_p95_max_ms": 25}, False, "> limit 25 ms"),
    ("latency", _health(p95=30.0), None, {}, True, None),
    ("error_rate", _health(errors=0.02), _health(errors=0.015), {}, True, None),
    ("error_rate", _health(errors=0.02), None, {}, False, "2.00% > 0.00%"),
    ("fallback_rate", _health(fallback=0.2), _health(fallback=0.1), {}, False, "fallback_rate: 20.00%"),
    ("fallback_rate", _health(fallback=0.2), _health(fallback=0.1), {"fallback_rate_increase": 0.1}, True, None),
    ("drift", _health(shift="mean"), _health(), {}, False, "features drifted"),
    ("drift", _health(shift="mean"), _health(shift="mean"), {}, True, None),  # everyone drifts: not this version
    ("drift", _health(), None, {}, True, None),
    ("drift", _health(n=50, shift="mean"), _health(), {}, None, "waiting for telemetry (50/200"),
])  # fmt: skip
def test_gate_rules(key: str, new: CohortHealth, old: CohortHealth | None, limits: dict[str, float],
                    verdict: bool | None, words: str | None) -> None:  # fmt: skip
    ok, reason = judge(key, new, old, TelemetryLimits.model_validate(limits), "v1 on p")
    assert ok is verdict
    assert (reason is None) if words is None else (reason is not None and words in reason), reason
