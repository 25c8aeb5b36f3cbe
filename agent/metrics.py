"""Prometheus metrics of one agent process (its own registry, never a module global)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AgentMetrics:
    """Counters and gauges the local API exposes at `/metrics`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.predictions = Counter(
            "edgefleet_agent_predictions", "Predictions served", ["model"], registry=self.registry
        )
        self.prediction_errors = Counter(
            "edgefleet_agent_prediction_errors",
            "Predictions refused or failed",
            ["model", "kind"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "edgefleet_agent_predict_seconds",
            "In-process predict latency",
            ["model"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
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
        self.drift_score = Gauge(
            "edgefleet_agent_drift_score", "Largest JS distance of the last window", ["model"], registry=self.registry
        )
        self.drifted_features = Gauge(
            "edgefleet_agent_drifted_features", "Features drifted in the last window", ["model"], registry=self.registry
        )
        self.dataset_drift = Gauge(
            "edgefleet_agent_dataset_drift",
            "1 when the last window drifted as a whole",
            ["model"],
            registry=self.registry,
        )
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
        self.mqtt_connected = Gauge("edgefleet_agent_mqtt_connected", "1 when connected", registry=self.registry)
