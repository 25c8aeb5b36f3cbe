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
        self.ingest_queue = Gauge("edgefleet_hub_ingest_queue", "Messages waiting to be stored", registry=self.registry)
        self.http_requests = Counter(
            "edgefleet_hub_http_requests", "HTTP requests", ["method", "status"], registry=self.registry
        )
        self.ingest_batch_seconds = Histogram(
            "edgefleet_hub_ingest_batch_seconds", "Time to store one ingest batch", registry=self.registry
        )
