"""Prometheus metrics, one registry per hub instance (tests run several hubs in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class HubMetrics:
    """Counters and gauges the hub exports on /metrics."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.mqtt_messages = Counter(
            "edgefleet_hub_mqtt_messages", "MQTT messages ingested", ["channel"], registry=self.registry
        )
        self.mqtt_rejected = Counter(
            "edgefleet_hub_mqtt_rejected", "MQTT messages rejected (malformed, wrong device)", ["reason"],
            registry=self.registry,
        )  # fmt: skip
        self.desired_published = Counter(
            "edgefleet_hub_desired_published", "Desired states published", registry=self.registry
        )
        self.mqtt_connected = Gauge("edgefleet_hub_mqtt_connected", "1 if connected", registry=self.registry)
        self.leader = Gauge(
            "edgefleet_hub_leader", "1 while this replica holds the leader lease (runs rollouts, monitor, TUF refresh)",
            registry=self.registry,
        )  # fmt: skip
        self.ingest_queue = Gauge("edgefleet_hub_ingest_queue", "Messages waiting to be stored", registry=self.registry)
        self.http_requests = Counter(
            "edgefleet_hub_http_requests", "HTTP requests", ["method", "status"], registry=self.registry
        )
        self.artifact_refusals = Counter(
            "edgefleet_hub_artifact_refusals", "Model downloads refused to a device (hub/access.py)", ["reason"],
            registry=self.registry,
        )  # fmt: skip
        self.metrics_auth_failures = Counter(
            "edgefleet_hub_metrics_auth_failures", "/metrics requests without the metrics (or admin) token",
            registry=self.registry,
        )  # fmt: skip
        self.ingest_batch_seconds = Histogram(
            "edgefleet_hub_ingest_batch_seconds", "Time to store one ingest batch", registry=self.registry
        )
        # Fleet telemetry over the last `telemetry_window_s` (hub/telemetry/monitor.py), per model, version and
        # profile ("*" = every profile); label sets are bounded by the monitor (MAX_SERIES) and removed when stale.
        labels = ["model", "version", "profile"]
        self.telemetry_latency_ms = Gauge(
            "edgefleet_hub_telemetry_latency_ms", "Inference latency quantile (ms)", [*labels, "quantile"],
            registry=self.registry,
        )  # fmt: skip
        self.telemetry_inferences = Gauge(
            "edgefleet_hub_telemetry_inferences", "Inferences in the window", labels, registry=self.registry
        )
        self.telemetry_error_rate = Gauge(
            "edgefleet_hub_telemetry_error_rate", "Share of inferences that failed", labels, registry=self.registry
        )
        self.telemetry_fallback_rate = Gauge(
            "edgefleet_hub_telemetry_fallback_rate", "Share answered by the cloud fallback", labels,
            registry=self.registry,
        )  # fmt: skip
        self.telemetry_drift_score = Gauge(
            "edgefleet_hub_telemetry_drift_score", "Largest JS distance to the baseline", labels, registry=self.registry
        )
        self.telemetry_dataset_drift = Gauge(
            "edgefleet_hub_telemetry_dataset_drift", "1 if the cohort shows dataset drift", labels,
            registry=self.registry,
        )  # fmt: skip
        self.telemetry_accuracy = Gauge(
            "edgefleet_hub_telemetry_accuracy", "Live accuracy from delayed labels", labels, registry=self.registry
        )
        self.drift_alerts = Counter(
            "edgefleet_hub_drift_alerts", "Drift alerts opened", ["model", "version", "cohort_kind"],
            registry=self.registry,
        )  # fmt: skip
        self.retention_deleted = Counter(
            "edgefleet_hub_retention_deleted_rows", "Rows deleted past their retention", ["table"],
            registry=self.registry,
        )  # fmt: skip
