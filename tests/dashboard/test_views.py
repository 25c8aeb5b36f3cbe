"""The pure helpers behind the pages: bar segments, versions per profile, allowed verbs, histograms."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hub.dashboard import telemetry_page, views


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


def test_histogram_compares_shares_not_counts() -> None:
    bars = telemetry_page.histogram([5, 5], [10, 90], ["a", "b"])
    assert [b.window_share for b in bars] == [0.1, 0.9] and [b.baseline_share for b in bars] == [0.5, 0.5]
    assert max(b.window_h for b in bars) == telemetry_page.CHART_H  # the tallest share fills the chart
    assert telemetry_page.bin_labels([0.0, 0.5, 1.0], 2) == ["[0, 0.5)", "[0.5, 1)"]
    assert telemetry_page.bin_labels(None, 2) == ["class 0", "class 1"]
