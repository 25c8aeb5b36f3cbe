"""The predict count and latency series: the same exposition prometheus-client's own Counter + Histogram give.
The drift gauges: computed when scraped, once per window."""

from __future__ import annotations

import threading
from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.metrics import PREDICT_BUCKETS, AgentMetrics
from protocol.drift import DriftReport, FeatureDrift


def _samples(text: str, prefix: str) -> set[tuple[str, frozenset[tuple[str, str]], float]]:
    return {
        (s.name, frozenset(s.labels.items()), round(s.value, 9))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith(prefix) and not s.name.endswith("_created")
    }


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["digits", "kws", "anomaly"]),
        st.lists(st.one_of(st.sampled_from(PREDICT_BUCKETS), st.floats(0, 3, allow_nan=False)), max_size=40),
        max_size=3,
    )
)
def test_predict_series_expose_what_a_counter_and_histogram_would(observed: dict[str, list[float]]) -> None:
    ours = AgentMetrics()
    reference = CollectorRegistry()
    count = Counter("edgefleet_agent_predictions", "Predictions served", ["model"], registry=reference)
    latency = Histogram("edgefleet_agent_predict_seconds", "In-process predict latency", ["model"],
                        buckets=PREDICT_BUCKETS, registry=reference)  # fmt: skip
    for model, values in observed.items():
        series = ours.predict_series(model)
        count.labels(model)  # a model seen with no prediction yet shows 0, as the series does
        latency.labels(model)
        for seconds in values:  # bounds themselves included: `le` means <=
            series.observe(seconds)
            count.labels(model).inc()
            latency.labels(model).observe(seconds)
    got = generate_latest(ours.registry).decode()
    want = generate_latest(reference).decode()
    for prefix in ("edgefleet_agent_predictions", "edgefleet_agent_predict_seconds"):
        assert _samples(got, prefix) == _samples(want, prefix)
    assert "# TYPE edgefleet_agent_predict_seconds histogram" in got


def test_concurrent_predictions_are_all_counted() -> None:
    metrics = AgentMetrics()
    series = metrics.predict_series("digits")

    def serve() -> None:
        for i in range(5000):
            series.observe(0.0004 if i % 2 else 0.003)

    threads = [threading.Thread(target=serve) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cumulative, total = series.snapshot()
    assert cumulative[-1] == 20_000 and cumulative[0] == 10_000  # 0.0004 <= 0.0005; 0.003 in the 0.005 bucket
    assert abs(total - 10_000 * (0.0004 + 0.003)) < 1e-6
    assert metrics.predict_series("digits") is series


def test_drift_gauges_are_computed_when_scraped_once_per_window() -> None:
    metrics = AgentMetrics()
    computed: list[float] = []

    def window(score: float, drifted: int) -> Callable[[], DriftReport]:
        def report() -> DriftReport:
            computed.append(score)
            features = [FeatureDrift(f"f{i}", 10, psi=0.0, js=score, drifted=i < drifted) for i in range(3)]
            return DriftReport(10, features, None, drifted / 3, drifted >= 2, 0.0, 0.0)

        return report

    metrics.drift.window_closed("m", window(0.3, 2))
    assert computed == []  # closing a window computes nothing
    samples = _samples(generate_latest(metrics.registry).decode(), "edgefleet_agent_d")
    assert samples == {
        ("edgefleet_agent_drift_score", frozenset({("model", "m")}), 0.3),
        ("edgefleet_agent_drifted_features", frozenset({("model", "m")}), 2.0),
        ("edgefleet_agent_dataset_drift", frozenset({("model", "m")}), 1.0),
    }
    generate_latest(metrics.registry)
    assert computed == [0.3]  # a second scrape of the same window reuses it
    metrics.drift.window_closed("m", window(0.1, 0))
    metrics.drift.window_closed("m", window(0.05, 0))  # two windows closed between scrapes: the last one counts
    samples = _samples(generate_latest(metrics.registry).decode(), "edgefleet_agent_d")
    assert computed == [0.3, 0.05]
    assert ("edgefleet_agent_drift_score", frozenset({("model", "m")}), 0.05) in samples
    assert ("edgefleet_agent_dataset_drift", frozenset({("model", "m")}), 0.0) in samples
