"""Prometheus metrics of one agent process (its own registry, never a module global)."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator
from itertools import accumulate
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from protocol.drift import DriftReport

MODEL = ["model"]

PREDICT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
_BUCKET_LABELS = [floatToGoString(b) for b in (*PREDICT_BUCKETS, float("inf"))]  # type: ignore[no-untyped-call]


class PredictSeries:
    """Predictions served by one model and their latency, kept for `edgefleet_agent_predictions` and
    `edgefleet_agent_predict_seconds`: one lock and two additions per call, the exposition built at scrape
    time (a `Counter` + `Histogram` pair costs three locks and a bucket loop on the serving path)."""

    __slots__ = ("_buckets", "_lock", "_sum")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets = [0] * (len(PREDICT_BUCKETS) + 1)  # per bucket (le), not yet cumulative; last: +Inf
        self._sum = 0.0

    def observe(self, seconds: float) -> None:
        i = bisect_left(PREDICT_BUCKETS, seconds)  # the first bound >= seconds: Prometheus' `le`
        with self._lock:
            self._buckets[i] += 1
            self._sum += seconds

    def snapshot(self) -> tuple[list[int], float]:
        """Cumulative bucket counts (the last one is the number of predictions) and the latency sum."""
        with self._lock:
            buckets, total = list(self._buckets), self._sum
        return list(accumulate(buckets)), total


class _PredictCollector:
    def __init__(self, series: dict[str, PredictSeries]) -> None:
        self._series = series

    def _families(self) -> tuple[CounterMetricFamily, HistogramMetricFamily]:
        return (
            CounterMetricFamily("edgefleet_agent_predictions", "Predictions served", labels=["model"]),
            HistogramMetricFamily("edgefleet_agent_predict_seconds", "In-process predict latency", labels=["model"]),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        count, latency = self._families()
        for model, series in sorted(self._series.items()):
            cumulative, total = series.snapshot()
            count.add_metric([model], cumulative[-1])
            latency.add_metric([model], list(zip(_BUCKET_LABELS, cumulative, strict=True)), total)
        yield count
        yield latency


class DriftGauges:
    """`edgefleet_agent_drift_score`, `_drifted_features` and `_dataset_drift` of each model's last closed
    window, computed when first scraped and kept until the next window closes.

    A drift report over a few hundred features is milliseconds of pure Python; computed on the telemetry
    thread at every window close, it held the GIL while predictions waited for it (the local API's p99 at
    batch 8 was 5-7 ms against a 1 ms p50). Computed on read, it costs nothing when nobody scrapes and once
    per window when something does."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, Callable[[], DriftReport]] = {}
        self._values: dict[str, tuple[float, int, bool]] = {}

    def window_closed(self, model: str, report: Callable[[], DriftReport]) -> None:
        """The model's last window changed; `report` computes its drift when the gauges are next read."""
        with self._lock:
            self._pending[model] = report

    def values(self) -> dict[str, tuple[float, int, bool]]:
        """Per model: (score, drifted features, dataset drift), computing what closed since the last read."""
        with self._lock:
            for model, report in self._pending.items():
                r = report()
                self._values[model] = (r.score, len(r.drifted_features), r.dataset_drift)
            self._pending.clear()
            return dict(self._values)

    def _families(self) -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("edgefleet_agent_drift_score", "Largest JS distance of the last window", labels=MODEL),
            GaugeMetricFamily("edgefleet_agent_drifted_features", "Features drifted in the last window", labels=MODEL),
            GaugeMetricFamily(
                "edgefleet_agent_dataset_drift", "1 when the last window drifted as a whole", labels=MODEL
            ),
        )

    def describe(self) -> Iterator[Metric]:
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        score, drifted, dataset = self._families()
        for model, (s, n, d) in sorted(self.values().items()):
            score.add_metric([model], s)
            drifted.add_metric([model], n)
            dataset.add_metric([model], 1 if d else 0)
        yield from (score, drifted, dataset)


class AgentMetrics:
    """Counters and gauges the local API exposes at `/metrics`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._predict: dict[str, PredictSeries] = {}
        self._predict_lock = threading.Lock()
        self.registry.register(_PredictCollector(self._predict))
        self.prediction_errors = Counter(
            "edgefleet_agent_prediction_errors",
            "Predictions refused or failed",
            ["model", "kind"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "edgefleet_agent_messages_rejected", "Malformed MQTT payloads rejected", ["channel"], registry=self.registry
        )
        self.events = Counter("edgefleet_agent_events", "Lifecycle events reported", ["kind"], registry=self.registry)
        self.active_version = Gauge(
            "edgefleet_agent_active_version", "Version serving per model", ["model"], registry=self.registry
        )
        self.fallback = Counter(
            "edgefleet_agent_fallback",
            "Requests sent to the cloud copy, by reason and outcome",
            ["model", "reason", "outcome"],
            registry=self.registry,
        )
        self.fallback_seconds = Histogram(
            "edgefleet_agent_fallback_seconds",
            "Time to a cloud answer or failure",
            ["model"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )
        self.drift = DriftGauges()
        self.registry.register(self.drift)
        self.window_accuracy = Gauge(
            "edgefleet_agent_window_accuracy",
            "Accuracy from delayed labels, last window",
            ["model"],
            registry=self.registry,
        )
        self.outbox = Gauge(
            "edgefleet_agent_outbox",
            "Telemetry outbox: rows, bytes, dropped, refused",
            ["what"],
            registry=self.registry,
        )
        self.hub_retries = Counter(
            "edgefleet_agent_hub_retries",
            "Update requests to the hub (metadata, manifest, artifact) retried after a network failure",
            ["model"],
            registry=self.registry,
        )
        self.shadow_samples = Counter(
            "edgefleet_agent_shadow_samples",
            "Rows a shadow candidate answered and compared with the serving version",
            MODEL,
            registry=self.registry,
        )
        self.shadow_dropped = Counter(
            "edgefleet_agent_shadow_dropped",
            "Requests sampled for a shadow candidate and never run (its queue was full, or it stopped first)",
            MODEL,
            registry=self.registry,
        )
        self.shadow_failed = Counter(
            "edgefleet_agent_shadow_failed",
            "Rows a shadow candidate could not answer",
            MODEL,
            registry=self.registry,
        )
        self.telemetry_unrecorded = Counter(
            "edgefleet_agent_telemetry_unrecorded",
            "Answers served but left out of telemetry: the manifest's baseline cannot bin them (logged once)",
            MODEL,
            registry=self.registry,
        )
        self.mqtt_connected = Gauge("edgefleet_agent_mqtt_connected", "1 when connected", registry=self.registry)
        self.api_refusals = Counter(
            "edgefleet_agent_api_refusals",
            "Local API connections and requests refused: busy, per_peer (503), deadline, stalled (408), "
            "json_depth, json_number (400)",
            ["reason"],
            registry=self.registry,
        )

    def predict_series(self, model: str) -> PredictSeries:
        """The model's predict count and latency (created on first use; callers keep it)."""
        series = self._predict.get(model)
        if series is None:
            with self._predict_lock:
                series = self._predict.setdefault(model, PredictSeries())
        return series
