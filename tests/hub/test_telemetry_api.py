"""Telemetry API in-process on SQLite and PostgreSQL: summaries stored by the bridge's ingest code are merged
per cohort and time range, equal the pooled data, and come back with statistics; bad input is a 4xx."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from hub.api.main import create_app
from hub.mqtt.ingest import IngestBatch, store_batch
from hub.services import Hub
from hub.settings import HubSettings
from hub.telemetry.stats import quantile_ms
from protocol.http import ENROLL_PATH
from protocol.telemetry import TelemetryMessage, TelemetrySummary, merge
from tests.hub.support import tar_gz
from tests.hub.test_telemetry_data import baseline, noisy_labels, sample, summarize, write_version

ADMIN = {"Authorization": "Bearer admin-secret-token"}
T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
URL = "/api/v1/telemetry/digits/1"
# device -> (profile, group, tags)
FLEET = {
    "pi-0": ("raspberry_pi_4", "lab", {"site": "a"}),
    "pi-1": ("raspberry_pi_4", "lab", {"site": "a"}),
    "pi-2": ("raspberry_pi_4", "lab", {"site": "b"}),
    "gw-0": ("x86_gateway", "edge", {"site": "b"}),
    "gw-1": ("x86_gateway", "edge", {"site": "b"}),
}


@pytest.fixture
def client(tmp_path: Path, db_url: str) -> Iterator[TestClient]:
    settings = HubSettings(data_dir=tmp_path / "data", database_url=db_url, admin_token="admin-secret-token",
                           mqtt_enabled=False, telemetry_alert_min_n=200)  # fmt: skip
    with TestClient(create_app(settings, background=False)) as c:
        folder = write_version(tmp_path / "out", "digits", 1, ["raspberry_pi_4", "x86_gateway"])
        pushed = c.post("/api/v1/models", files={"archive": ("o.tar.gz", tar_gz(folder))}, headers=ADMIN)
        assert pushed.status_code == 201, pushed.text
        for device_id, (profile, group, tags) in FLEET.items():
            tok = c.post("/api/v1/enrollment-tokens", json={"group": group, "tags": tags}, headers=ADMIN).json()
            r = c.post(ENROLL_PATH, json={"enrollment_token": tok["token"], "profile": profile, "device_id": device_id})
            assert r.status_code == 201, r.text
        yield c


def _store(hub: Hub, summaries: list[tuple[int, TelemetrySummary]]) -> None:
    batch = IngestBatch(telemetry=[TelemetryMessage(id=i, device_id=s.device_id, summary=s) for i, s in summaries])
    store_batch(engine=hub.engine, batch=batch, now=datetime.now(UTC))


def _windows(rng: np.random.Generator, shift: dict[str, str] | None = None) -> dict[str, list[TelemetrySummary]]:
    """Two windows per device (T0 and T0 + 1 h) with latency, errors, fallbacks and delayed labels."""
    base, out = baseline(), {}
    for k, (device_id, (profile, _g, _t)) in enumerate(FLEET.items()):
        out[device_id] = []
        for w in range(2):
            x = sample(rng, 150 + 40 * k, (shift or {}).get(device_id))
            lat = rng.lognormal(np.log(3 + 5 * (profile == "x86_gateway")), 0.5, len(x))
            out[device_id].append(summarize(device_id, profile, "digits", 1, x, lat, base=base, errors=k,
                                            fallback={"no_model": w, "timeout": 1}, labels=noisy_labels(rng, x),
                                            start=T0 + timedelta(hours=w)))  # fmt: skip
    return out


def _stats(client: TestClient, **params: object) -> dict[str, object]:
    r = client.get(URL, params=params, headers=ADMIN)  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    body: dict[str, object] = r.json()
    return body


def test_cohorts_merge_to_the_pooled_summary_with_statistics(client: TestClient) -> None:
    hub: Hub = client.app.state.hub  # type: ignore[attr-defined]
    rng = np.random.default_rng(3)
    windows = _windows(rng)
    rows = [(w, s) for per in windows.values() for w, s in enumerate(per)]
    _store(hub, rows)
    _store(hub, rows[:4])  # redelivered before the ack arrived: stored once
    every = [s for per in windows.values() for s in per]
    pooled = merge(every)
    fleet = _stats(client)
    assert fleet["rows"] == 10 and fleet["devices"] == 5 and fleet["truncated"] is False
    merged = TelemetrySummary.model_validate(fleet["summary"])
    assert merged.n == pooled.n == sum(s.n for s in every)
    assert merged.inputs == pooled.inputs and merged.class_counts == pooled.class_counts
    assert merged.latency_buckets == pooled.latency_buckets and merged.confusion == pooled.confusion
    assert fleet["errors"] == pooled.errors and fleet["fallback"] == {"no_model": 5, "timeout": 10}
    assert fleet["fallback_rate"] == pytest.approx(15 / pooled.n)
    lat = fleet["latency_ms"]
    assert isinstance(lat, dict) and lat["p95"] == pytest.approx(quantile_ms(pooled.latency_buckets, 0.95))
    assert lat["p50"] < lat["p95"] <= lat["p99"]
    # live quality from the confusion matrix equals scikit-learn on the labelled samples
    conf = np.asarray(pooled.confusion)
    y_true = np.repeat(np.arange(3), conf.sum(axis=1))
    y_pred = np.concatenate([np.repeat(np.arange(3), row) for row in conf])
    p, r, f1, _ = precision_recall_fscore_support(y_true, y_pred, average="macro")
    labels = fleet["labels"]
    assert isinstance(labels, dict) and labels["n"] == pooled.n
    assert labels["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert (labels["precision"], labels["recall"], labels["f1"]) == pytest.approx((p, r, f1))
    drift = fleet["drift"]
    assert isinstance(drift, dict) and drift["dataset_drift"] is False and len(drift["features"]) == 8
    first = drift["features"][0]
    assert len(first["edges"]) == len(first["baseline_counts"]) + 1 == len(first["window_counts"]) + 1
    assert sum(first["window_counts"]) == pooled.n and drift["classes"]["window_counts"] == pooled.class_counts

    pi = _stats(client, profile="raspberry_pi_4")
    assert pi["devices"] == 3 and pi["drift"]["baseline_profile"] == "raspberry_pi_4"  # type: ignore[index]
    assert pi["n"] == merge([s for d in ("pi-0", "pi-1", "pi-2") for s in windows[d]]).n
    site_b = _stats(client, tag="site=b")
    assert site_b["devices"] == 3 and site_b["n"] == sum(s.n for d in ("pi-2", "gw-0", "gw-1") for s in windows[d])
    both = _stats(client, tag=["site=b"], group="edge")
    assert both["devices"] == 2
    late = _stats(client, since=(T0 + timedelta(minutes=30)).isoformat())
    assert late["rows"] == 5 and late["n"] == sum(per[1].n for per in windows.values())
    early = _stats(client, until="2026-11-25T08:30:00")  # no offset: UTC
    assert early["rows"] == 5 and early["n"] == sum(per[0].n for per in windows.values())
    newest = _stats(client, limit=3)
    assert newest["rows"] == 3 and newest["truncated"] is True
    one = _stats(client, device="gw-1")
    assert one["device"] == "gw-1" and one["devices"] == 1 and one["n"] == merge(windows["gw-1"]).n
    listed = client.get("/api/v1/telemetry", params={"since": T0.isoformat()}, headers=ADMIN).json()
    assert [(v["model"], v["version"], v["rows"], v["devices"]) for v in listed] == [("digits", 1, 10, 5)]
    nobody = _stats(client, group="nowhere")
    assert nobody["n"] == 0 and nobody["summary"] is None and nobody["latency_ms"] is None


def test_bad_requests_get_a_4xx_with_a_message(client: TestClient) -> None:
    cases = {
        "/api/v1/telemetry/digits/1?since=2026-11-25T10:00:00Z&until=2026-11-25T09:00:00Z": 422,
        "/api/v1/telemetry/digits/1?tag=no-equals-sign": 422,
        "/api/v1/telemetry/digits/1?since=yesterday": 422,
        "/api/v1/telemetry/digits/1?limit=0": 422,
        "/api/v1/telemetry/digits/1?until=9999-12-31T23:59:59Z": 422,
        "/api/v1/telemetry/digits/1?since=0001-01-01T00:00:00%2B01:00": 422,
        "/api/v1/telemetry/digits/x": 422,
        "/api/v1/telemetry/digits/9": 404,
        "/api/v1/telemetry/alerts?state=maybe": 422,
        "/api/v1/telemetry?since=2026-11-25T10:00:00Z&until=2026-11-25T09:00:00Z": 422,
        "/api/v1/telemetry/digits/1?device=no%20spaces": 422,
    }
    for url, status in cases.items():
        r = client.get(url, headers=ADMIN)
        assert r.status_code == status, (url, r.text)
        assert r.json()["detail"], url
    assert client.get(URL).status_code == 401


def test_monitor_exports_gauges_and_deduplicates_drift_alerts(client: TestClient) -> None:
    hub: Hub = client.app.state.hub  # type: ignore[attr-defined]
    now = T0 + timedelta(minutes=70)
    hub.telemetry.clock = lambda: now
    rng = np.random.default_rng(9)
    windows = _windows(rng, shift={"gw-0": "mean", "gw-1": "mean"})  # the gateways' sensors drifted
    _store(hub, [(w, s) for per in windows.values() for w, s in enumerate(per)])
    first = hub.telemetry.run_once()
    opened = {c.alert_id for c in first if c.action == "opened"}
    hub.telemetry.run_once()  # the same drift again: refreshed, not reopened
    alerts = client.get("/api/v1/telemetry/alerts", params={"state": "open"}, headers=ADMIN).json()
    # half the fleet's inferences moved by one std: the fleet drifts too; the Pis do not
    assert {a["cohort"] for a in alerts} == {"fleet", "profile:x86_gateway", "group:edge"} and len(opened) == 3
    assert all(a["n"] >= 200 and "features drifted" in a["reason"] for a in alerts)
    text = client.get("/metrics").text
    assert 'edgefleet_hub_drift_alerts_total{cohort_kind="profile",model="digits",version="1"} 1.0' in text
    assert 'edgefleet_hub_telemetry_dataset_drift{model="digits",profile="x86_gateway",version="1"} 1.0' in text
    assert 'edgefleet_hub_telemetry_latency_ms{model="digits",profile="*",quantile="0.95",version="1"}' in text
    assert 'edgefleet_hub_telemetry_accuracy{model="digits",profile="raspberry_pi_4",version="1"}' in text
    # an hour later the gateways report clean data again: the alerts resolve, nothing new opens
    now = T0 + timedelta(hours=3)
    clean = {d: [summarize(d, FLEET[d][0], "digits", 1, sample(rng, 400), np.full(400, 4.0), base=baseline(),
                           start=now - timedelta(minutes=5))] for d in FLEET}  # fmt: skip
    _store(hub, [(10, s[0]) for s in clean.values()])
    changes = hub.telemetry.run_once()
    assert {c.action for c in changes} <= {"resolved", "none"} and sum(c.action == "resolved" for c in changes) == 3
    resolved = client.get("/api/v1/telemetry/alerts", params={"model": "digits", "version": 1}, headers=ADMIN).json()
    assert {a["state"] for a in resolved} == {"resolved"} and len(resolved) == 3
    text = client.get("/metrics").text
    assert 'edgefleet_hub_telemetry_dataset_drift{model="digits",profile="x86_gateway",version="1"} 0.0' in text
    assert "edgefleet_hub_telemetry_accuracy{" not in text  # no labels in this window


def test_hourly_rollups_answer_exactly_like_the_raw_windows(client: TestClient) -> None:
    from hub.telemetry.rollup import roll_up

    hub: Hub = client.app.state.hub  # type: ignore[attr-defined]
    windows = _windows(np.random.default_rng(6))
    _store(hub, [(w, s) for per in windows.values() for w, s in enumerate(per)])
    ranges = [{}, {"profile": "x86_gateway"}, {"since": "2026-11-25T08:00:00Z"}, {"since": "2026-11-25T08:00:30Z"},
              {"until": "2026-11-25T09:00:00Z"}, {"since": "2026-11-25T07:00:00Z", "until": "2026-11-25T08:59:00Z"},
              {"profile": "raspberry_pi_4", "since": "2026-11-25T09:00:00Z"}]  # fmt: skip
    keys = ("n", "rows", "devices", "errors", "fallback", "latency_ms", "labels", "window_start", "window_end")

    def answers() -> list[tuple[object, ...]]:
        out = []
        for params in ranges:
            body = _stats(client, **params)
            summary = dict(body["summary"] or {})  # type: ignore[call-overload]
            out.append((*(body[k] for k in keys), summary.get("inputs"), summary.get("class_counts")))
        return out

    raw = answers()
    with hub.engine.begin() as conn:
        assert roll_up(conn, batch=3) == 3  # partly rolled up: rollups and raw windows together
    assert answers() == raw
    with hub.engine.begin() as conn:
        assert roll_up(conn) == 7
        assert roll_up(conn) == 0
    assert answers() == raw
    late = summarize("pi-0", "raspberry_pi_4", "digits", 1, sample(np.random.default_rng(1), 90), np.full(90, 3.0),
                     base=baseline(), start=T0 + timedelta(minutes=20))  # fmt: skip
    _store(hub, [(99, late)])  # a late window for an hour that is already rolled up
    with hub.engine.begin() as conn:
        assert roll_up(conn) == 1
    assert _stats(client)["n"] == raw[0][0] + 90 and _stats(client)["rows"] == 11  # type: ignore[operator]


def test_any_query_on_stored_telemetry_is_answered_without_a_server_error(client: TestClient) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    hub: Hub = client.app.state.hub  # type: ignore[attr-defined]
    _store(hub, [(w, s) for per in _windows(np.random.default_rng(2)).values() for w, s in enumerate(per)])
    with hub.engine.begin() as conn:
        from hub.telemetry.rollup import roll_up

        roll_up(conn, batch=4)
    stamps = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                          timezones=st.one_of(st.none(), st.timezones()))  # fmt: skip
    text = st.text(max_size=12)
    params = st.fixed_dictionaries({}, optional={
        "since": stamps.map(datetime.isoformat), "until": stamps.map(datetime.isoformat),
        "profile": st.one_of(st.sampled_from(["raspberry_pi_4", "x86_gateway"]), text),
        "group": st.one_of(st.just("lab"), text), "tag": st.lists(text, max_size=3), "device": text,
        "limit": st.integers(-5, 200_000),
    })  # fmt: skip

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(params)
    def check(query: dict[str, object]) -> None:
        r = client.get(URL, params=query, headers=ADMIN)  # type: ignore[arg-type]
        assert r.status_code in (200, 422), (query, r.text)
        assert r.status_code == 422 or r.json()["n"] >= 0

    check()


def test_retention_deletes_old_rolled_up_windows_and_events_and_keeps_fleet_statistics(client: TestClient) -> None:
    from sqlalchemy import func, select

    from hub.db.schema import events, telemetry
    from hub.telemetry.retention import Retention
    from hub.telemetry.rollup import roll_up
    from protocol.messages import Event, EventKind

    hub: Hub = client.app.state.hub  # type: ignore[attr-defined]
    _store(hub, [(w, s) for per in _windows(np.random.default_rng(8)).values() for w, s in enumerate(per)])
    old, new = T0 - timedelta(days=100), datetime.now(UTC)
    store_batch(engine=hub.engine, now=new, batch=IngestBatch(events=[
        Event(device_id="pi-0", seq=1, kind=EventKind.COMMITTED, ts=old),
        Event(device_id="pi-0", seq=2, kind=EventKind.COMMITTED, ts=new)]))  # fmt: skip
    whole_hours: list[dict[str, str]] = [{}, {"profile": "x86_gateway"}, {"since": "2026-11-25T09:00:00Z"}]
    keys = ("n", "rows", "errors", "fallback", "latency_ms", "labels", "window_start", "window_end", "summary")

    def answer(params: dict[str, str]) -> tuple[object, ...]:
        body = _stats(client, **params)
        body["summary"].pop("devices")  # type: ignore[attr-defined]  # counted from raw rows only (documented)
        return tuple(body[k] for k in keys)

    with hub.engine.begin() as conn:
        assert roll_up(conn) == 10
    before = [answer(p) for p in whole_hours]
    assert _stats(client, device="pi-0")["n"] > 0

    late = summarize("pi-1", "raspberry_pi_4", "digits", 1, sample(np.random.default_rng(3), 50), np.full(50, 3.0),
                     base=baseline(), start=T0 - timedelta(days=30))  # fmt: skip
    _store(hub, [(77, late)])  # old, but not rolled up yet: retention must not touch it
    with hub.engine.begin() as conn:
        assert Retention().prune(conn, T0 + timedelta(days=1)) == {"telemetry": 0, "telemetry_hourly": 0,
                                                                    "events": 1}  # fmt: skip
    hub.telemetry.retention = Retention(raw_s=3600)  # the monitor's pass: windows older than an hour go
    hub.telemetry.run_once()  # (it rolls the late window up first, then prunes it too)
    with hub.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(telemetry)).scalar_one() == 0
        assert [r.seq for r in conn.execute(select(events.c.seq))] == [2]
    assert 'edgefleet_hub_retention_deleted_rows_total{table="telemetry"} 11.0' in client.get("/metrics").text
    after = [answer(p) for p in whole_hours[1:]]
    assert after == before[1:]  # whole-hour fleet and profile statistics come from the rollups
    assert _stats(client)["n"] == before[0][0] + 50  # plus the late window, now in its rollup
    assert _stats(client, device="pi-0")["n"] == 0  # per-device detail is gone past the raw retention
    with hub.engine.begin() as conn:
        assert Retention().prune(conn, T0 + timedelta(days=500))["telemetry_hourly"] > 0
