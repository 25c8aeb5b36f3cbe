"""The pure helpers behind the pages: bar segments, versions per profile, allowed verbs, histograms, charts, the
merge of every source."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hub.dashboard import charts, histograms, views, waves
from hub.telemetry import accumulate, sources
from tests.dashboard import meter


def test_stacked_segments_follow_the_state_order_and_fill_the_bar() -> None:
    segments = views.stacked({"failed": 1, "healthy": 2, "weird": 1}, 4, views.DEVICE_STATE_ORDER)
    assert [(s.label, s.count, s.x, s.width) for s in segments] == [
        ("healthy", 2, 0.0, 50.0), ("failed", 1, 50.0, 25.0), ("weird", 1, 75.0, 25.0)]  # fmt: skip
    assert views.stacked({}, 0) == []


def test_versions_by_profile_counts_each_running_model_version() -> None:
    devices = [
        {"profile": "pi", "current_versions": {"digits": 1}},
        {"profile": "pi", "current_versions": {"digits": 2, "kws": 3}},
        {"profile": "gw", "current_versions": {"digits": None}},
    ]
    assert views.versions_by_profile(devices) == [
        {"profile": "gw", "devices": 1, "versions": [("no model", 1)]},
        {"profile": "pi", "devices": 2, "versions": [("digits v1", 1), ("digits v2", 1), ("kws v3", 1)]},
    ]


@pytest.mark.parametrize(("state", "verbs"), [
    ("running", ["pause", "abort", "rollback"]), ("paused", ["resume", "abort", "rollback"]),
    ("scheduled", ["start", "abort"]), ("completed", ["rollback"]), ("rolled_back", []), ("bogus", []),
])  # fmt: skip
def test_buttons_are_the_transitions_the_state_machine_allows(state: str, verbs: list[str]) -> None:
    assert views.allowed_verbs(state) == verbs


def test_readable_times_and_sizes() -> None:
    now = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
    assert views.ago("2026-11-25T11:59:50Z", now) == "10 s ago"
    assert views.ago("2026-11-25T09:00:00+00:00", now) == "3 h ago"
    assert views.ago(None, now) == "never"
    assert views.human_bytes(512) == "512 B" and views.human_bytes(3 * 2**20) == "3.0 MiB"


def test_histogram_rows_compare_shares_and_leave_room_for_their_labels() -> None:
    h = histograms.histogram([histograms.Bin("a", "[0, 1)", 5, 10), histograms.Bin("bb", "[1, 2]", 5, 90)])
    assert [r.window_share for r in h.rows] == [0.1, 0.9] and [r.baseline_share for r in h.rows] == [0.5, 0.5]
    assert max(r.window_w for r in h.rows) == h.bar_w  # the largest share fills the bars
    assert h.label_w >= histograms.CHAR_W * 2 and h.bar_x > h.label_w


def test_zero_width_bins_are_merged_and_labels_are_rounded_apart() -> None:
    for name, edges in meter.EDGES.items():
        window = list(range(1, len(meter.COUNTS[name]) + 1))
        bins = histograms.feature_bins(edges, meter.COUNTS[name], window)
        assert [b.label for b in bins] == meter.LABELS[name]
        assert sum(b.baseline for b in bins) == sum(meter.COUNTS[name]) and sum(b.window for b in bins) == sum(window)
    bins = histograms.feature_bins(meter.EDGES["sensors[0]"], meter.COUNTS["sensors[0]"], [0] * 9)
    assert bins[0].exact.startswith("[0.0, 0.0625)") and bins[-1].exact.startswith("= 1.0")
    assert histograms.edge_texts([0.0, 0.5, 1.0]) == ["0", "0.5", "1"]
    assert histograms.edge_texts([0.1234, 0.1236, 0.2]) == ["0.123", "0.124", "0.2"]  # as many decimals as needed
    labels = [b.label for b in histograms.latency_bins({"counts": [0, 3, 0, 5, 0], "bucket_upper_ms": [1, 2, 5, 10]})]
    assert labels == ["1\u20132 ms", "2\u20135 ms", "5\u201310 ms"]


def test_charts_place_values_on_a_shared_time_axis() -> None:
    assert [charts.nice_max(v) for v in (0, 3, 0.012, 1000)] == [1.0, 5.0, 0.02, 1000.0]
    t0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    points = [{"start": (t0 + timedelta(minutes=m)).isoformat(), "end": (t0 + timedelta(minutes=m + 1)).isoformat(),
               "v": v} for m, v in enumerate([1.0, None, 2.0, 4.0])]  # fmt: skip
    event = {"ts": (t0 + timedelta(minutes=2)).isoformat(), "action": "rollout.pause", "label": "paused",
             "version": 2, "rollout_id": "r-1", "actor": "admin", "reason": None}  # fmt: skip
    chart = charts.line_chart("k", "t", [charts.Series("v", "ln-0", points, lambda p: p["v"])], t0=t0,
                              t1=t0 + timedelta(minutes=4), events=[event])  # fmt: skip
    line = chart.lines[0]
    assert [p.value for p in line.points] == [1.0, 2.0, 4.0] and len(line.paths) == 1  # a gap: no line to 1.0
    assert line.points[0].x == round(chart.x0 + (chart.x1 - chart.x0) / 8, 2)  # the first bucket's middle
    assert chart.markers[0].x == round((chart.x0 + chart.x1) / 2, 2) and chart.markers[0].lane == 0


def test_alert_features_rollout_target_and_gate_limits() -> None:
    classes_only = {"drifted_features": [], "reason": "0/3 features drifted; predicted classes drifted (chi2); score"}
    assert views.alert_features(classes_only) == ["predicted class"]
    assert views.alert_features({"drifted_features": ["x"], "reason": "1/1 features drifted (x)"}) == ["x"]
    assert views.target_rows({}) == [("devices", "the whole fleet")]
    assert views.target_rows({"group": "lab", "tags": {"site": "a"}}) == [("group", "lab"), ("tag", "site=a")]
    rows = {r.name: r for r in views.gate_limit_rows({"gates": ["self_test", "drift"],
                                                      "gate_limits": {"drift_share": 0.25}})}  # fmt: skip
    assert rows["drift_share"].value == "25 %" and rows["drift_share"].changed and rows["drift_share"].active
    assert rows["latency_p95_ratio"].value == "1.5\u00d7" and not rows["latency_p95_ratio"].active
    assert views.duration(3600) == "1 h" and views.duration(90) == "90 s" and views.duration(7 * 86400) == "7 d"


def test_windows_without_bins_add_to_the_counts_of_windows_with_bins() -> None:
    t = "2026-11-25T12:00:00+00:00"
    base = {"device_id": "d", "model": "m", "version": 1, "profile": "p", "window_start": t, "window_end": t,
            "latency_buckets": [0] * 18, "fallback_latency_buckets": [0] * 18}  # fmt: skip
    cloud = {**base, "n": 30, "errors": 2, "fallback": {"no_model": 30}, "fallback_errors": {"no_model": 2}}
    served = {**base, "device_id": "e", "n": 100, "errors": 1, "fallback": {"low_confidence": 4},
              "inputs": [{"name": "x", "counts": [60, 40]}], "latency_buckets": [0, 99] + [0] * 16}  # fmt: skip
    assert accumulate.cloud_only(cloud) and not accumulate.has_bins(cloud) and accumulate.has_bins(served)
    merge = accumulate.Accumulator()
    assert merge.add(cloud) and merge.add(served)  # in this order the first window once fixed the layout: no device
    s = merge.result()
    assert s is not None and s.n == 130 and s.errors == 3 and s.inputs[0].counts == [60, 40] and s.devices == 2
    counts = sources.source_counts(s, no_model_n=merge.cloud_only_n, no_model_rows=merge.cloud_only_rows)
    assert (counts.device, counts.cloud, counts.failed, counts.no_model) == (95, 32, 3, 30)
    served_only = merge.served()  # what the rollout gates judge: the windows of the devices serving the version
    assert served_only is not None and (served_only.n, served_only.errors, served_only.fallback) == (
        100, 1, {"low_confidence": 4})  # fmt: skip


def test_waves_are_named_from_0_as_the_api_and_the_engine_reasons_count_them() -> None:
    canary = {"spec": {"canary_percent": 10}, "current_wave": 1, "waves": [{}, {}, {}]}
    plain = {"spec": {"canary_percent": 0}, "current_wave": 0, "waves": [{}]}
    assert [waves.wave_name(w, canary) for w in range(3)] == ["wave 0 (canary)", "wave 1", "wave 2"]
    assert [waves.wave_label(w, canary) for w in range(2)] == ["0 (canary)", "1"]
    assert waves.wave_name(0, plain) == "wave 0"
    assert waves.wave_position(canary) == "wave 1 of 0-2" and waves.wave_position(plain) == "wave 0"
    assert waves.wave_position({**canary, "current_wave": 0}) == "wave 0 (canary) of 0-2"
    from hub.telemetry.trends import mark_label

    assert mark_label("rollout.wave", {"from": 0, "to": 1}) == "wave 1 released"  # the audit's own numbers
