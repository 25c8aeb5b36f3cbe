"""A cloud-only window (cloud answers while no version served on the device) arriving before the device windows
of its version: the hourly rollups, the cohort queries and the rollout gates keep both and count each source.

Before issue 22 the first window fixed the merge's bin layout, so a cloud-only window first made every device
window of its rollup, gate cohort or monitor pass "not fit" and be dropped (only the API repaired it).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select

from hub.mqtt.ingest import IngestBatch, store_batch
from hub.rollouts.engine import RolloutEngine
from hub.schemas import RolloutCreate
from hub.telemetry.health import TelemetryLimits, TelemetryView
from hub.telemetry.query import Cohort, merged_telemetry
from hub.telemetry.rollup import roll_up
from hub.telemetry.tables import telemetry_hourly
from protocol.telemetry import LATENCY_BUCKETS_MS, TelemetryMessage, TelemetrySummary, merge
from tests.hub.test_telemetry_gates import GATES, T0, Telemetry, _members, _serving, db

__all__ = ["db"]  # the fixture: a database with m v1 and v2 for profile p, devices d0 and d1


def cloud_only(device_id: str, version: int, start: datetime, calls: int, failed: int = 0) -> TelemetrySummary:
    """What an agent uploads while no version of m serves on it: the cloud's answers and failed calls."""
    latency = [0] * (len(LATENCY_BUCKETS_MS) + 1)
    latency[10] = calls
    return TelemetrySummary(
        device_id=device_id, model="m", version=version, profile="p", window_start=start,
        window_end=start + timedelta(minutes=50), n=calls, errors=failed, fallback={"no_model": calls},
        fallback_errors={"no_model": failed} if failed else {}, fallback_latency_buckets=latency,
    )  # fmt: skip


class Windows(Telemetry):
    """Device windows as in the gate tests, cloud-only ones beside them; every stored window kept for checks."""

    def __init__(self, db: Engine) -> None:
        super().__init__(db)
        self.stored: list[TelemetrySummary] = []

    def store(self, s: TelemetrySummary) -> None:
        self.next_id += 1
        batch = IngestBatch(telemetry=[TelemetryMessage(id=self.next_id, device_id=s.device_id, summary=s)])
        store_batch(engine=self.db, batch=batch, now=s.window_end)
        self.stored.append(s)

    def device(self, device_id: str, version: int, n: int, start: datetime, errors: int = 0) -> TelemetrySummary:
        from tests.hub.test_telemetry_data import sample, summarize

        s = summarize(device_id, "p", "m", version, sample(self.rng, n), self.rng.uniform(1.2, 2.8, n),
                      base=self.base, errors=errors, fallback={"low_confidence": 3}, start=start)  # fmt: skip
        self.store(s)
        return s


def _merged(db: Engine, version: int, every_source: bool, **cohort: Any) -> Any:
    with db.connect() as conn:
        return merged_telemetry(conn, model="m", version=version, cohort=Cohort(**cohort), every_source=every_source)


def test_rollups_and_queries_keep_device_and_cloud_windows_when_a_cloud_only_window_came_first(db: Engine) -> None:
    w = Windows(db)
    # stored first, and the newest window too: first whichever way a merge reads them
    cloud = cloud_only("d0", 1, T0 + timedelta(minutes=5), 40, failed=2)
    w.store(cloud)
    devices = [w.device(d, 1, 300 + 50 * k, T0 + timedelta(minutes=10 + k)) for k, d in enumerate(("d0", "d1"))]
    served = merge(devices)

    raw_every, raw_serving = _merged(db, 1, True), _merged(db, 1, False)
    with db.begin() as conn:
        assert roll_up(conn, batch=1) == 1  # the cloud-only window alone: the rollup starts with it
        assert roll_up(conn) == 2  # the device windows join it
        (rollup,) = conn.execute(select(telemetry_hourly)).all()
    assert (rollup.rows, rollup.skipped) == (3, 0)
    assert rollup.summary["n"] == cloud.n + served.n and rollup.summary["cloud_only"]["rows"] == 1
    assert rollup.summary["inputs"] == served.model_dump(mode="json")["inputs"]

    for before, every_source in ((raw_every, True), (raw_serving, False)):
        after = _merged(db, 1, every_source)
        times = {"window_start", "window_end", "device_id"}
        assert after.summary.model_dump(exclude=times) == before.summary.model_dump(exclude=times)
        assert (after.rows, after.skipped, after.no_model, after.no_model_rows, after.hours_from_windows) == (
            3, 0, cloud.n, 1, 0)  # fmt: skip
    every, serving = _merged(db, 1, True), _merged(db, 1, False)
    assert every.summary.n == cloud.n + served.n and every.summary.errors == cloud.errors + served.errors
    assert every.summary.fallback == {"no_model": 40, "low_confidence": 6}
    assert every.summary.inputs == served.inputs and every.summary.latency_buckets == served.latency_buckets
    # the gates' view: the windows of the devices serving the version, counted alone
    assert serving.summary.n == served.n and serving.summary.fallback == {"low_confidence": 6}
    assert serving.summary.inputs == served.inputs and serving.summary.class_counts == served.class_counts
    assert every.serving == serving.summary

    late = w.device("d1", 1, 100, T0 + timedelta(minutes=30))  # a window for an hour already rolled up
    with db.begin() as conn:
        assert roll_up(conn) == 1
    again = _merged(db, 1, True)
    assert (again.summary.n, again.no_model, again.rows, again.skipped) == (every.summary.n + late.n, cloud.n, 4, 0)


def test_gates_judge_the_device_windows_when_a_cloud_only_window_came_first(db: Engine) -> None:
    now = T0 + timedelta(hours=2)
    w = Windows(db)
    for d in ("d0", "d1"):
        _serving(db, d, 1, now)
    # v1, the version the gates compare against, from the hourly rollups: a cloud-only window first
    w.store(cloud_only("d0", 1, T0 + timedelta(minutes=2), 500))
    v1 = merge([w.device(d, 1, 1000, T0 + timedelta(minutes=5)) for d in ("d0", "d1")])
    with db.begin() as conn:
        assert roll_up(conn) == 3
    clock = [now]
    engine = RolloutEngine(engine=db, clock=lambda: clock[0])
    limits = TelemetryLimits(min_inferences=200)
    engine.create(RolloutCreate(id="r2", model="m", version=2, canary_percent=0, stages=[100], probation_s=0,
                                gates=GATES, gate_limits=limits), actor="test")  # fmt: skip
    for d in ("d0", "d1"):
        _serving(db, d, 2, now)
    engine.tick()
    assert {state for state, _reason in _members(db).values()} == {"probation"}
    # v2 on both devices: the cloud answered 300 requests of each under v2 while it was being installed (a window
    # that closed last, so it is the newest), then each device served 300 itself
    for d in ("d0", "d1"):
        w.store(cloud_only(d, 2, now + timedelta(seconds=1), 300))
    v2 = {d: w.device(d, 2, 300, now + timedelta(minutes=2)) for d in ("d0", "d1")}
    now = clock[0] = now + timedelta(hours=1)
    with db.connect() as conn:
        view = TelemetryView(conn, now)
        old = view.previous("m", 1, "p", TelemetryLimits())
        new = view.device("m", 2, "d0", "p", None)
    assert old is not None and old.n == v1.n and old.fallback_rate == v1.fallback_rate and old.p95_ms is not None
    assert new is not None and new.n == v2["d0"].n and new.fallback_rate == v2["d0"].fallback_rate
    assert new.drift is not None and new.drift.n == v2["d0"].n
    engine.tick()
    assert _members(db) == {"d0": ("healthy", None), "d1": ("healthy", None)}
    with db.connect() as conn:
        from hub.store import rollouts as rollout_store

        row = rollout_store.get(conn=conn, rollout_id="r2")
    assert row is not None and row["state"] == "completed", row
