"""The daemon's serving side: what serves at start-up, manifests it knows, self-test verdicts, window gauges."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from agent.errors import AgentError
from agent.inference import InferenceService
from agent.lifecycle import TERMINAL, Lifecycle, UpdateRecord
from agent.metrics import AgentMetrics
from agent.model import LoadedModel
from agent.mqtt import MqttSession
from agent.reporting import EventLog
from agent.serving import ServingRegistry
from agent.settings import AgentSettings
from agent.store import ModelStore
from agent.telemetry.recorders import Recorders
from agent.telemetry.uplink import TelemetryUplink
from protocol.drift import drift_report
from protocol.manifest import Manifest
from protocol.messages import LifecycleState as State
from protocol.telemetry import TelemetrySummary
from protocol.topics import Channel

log = logging.getLogger(__name__)


class ServingContext:
    """Read-only views of the store and lifecycle for the fallback router and the telemetry uplink."""

    def __init__(
        self,
        store: ModelStore,
        lifecycle: Lifecycle,
        serving: ServingRegistry,
        metrics: AgentMetrics,
        download_dir: Callable[[UpdateRecord], Path],
    ) -> None:
        self.store = store
        self.lifecycle = lifecycle
        self.serving = serving
        self.metrics = metrics
        self.download_dir = download_dir

    def serve_active(self, name: str, threads: int) -> None:
        """Serve the active version; mid-update, the one that passed before (the new one is not tested yet)."""
        version = self.store.slot_version(name, "active")
        record = self.lifecycle.load(name)
        untested = (State.ACTIVATING, State.SELF_TEST, State.ROLLING_BACK)
        if record.state in untested:
            # Serve the version that passed before; on a first install there is none, and the new one is
            # not served (nor even loaded: a model that crashes its runtime would crash every start) until
            # the resumed self-test has passed.
            version = record.from_version
        if version is None:
            return
        try:
            manifest = self.store.manifest(name, version)
            model = LoadedModel.from_file(self.store.artifact(name, version), threads, manifest)
        except AgentError as e:
            log.error("cannot serve %s v%s: %s", name, version, e)
            return
        self.serving.install(name, version, model)
        self.metrics.active_version.labels(name).set(version)

    def manifest_of(self, name: str) -> Manifest | None:
        """The newest manifest this device knows for `name`: the active one, else the one being downloaded."""
        record = self.lifecycle.load(name)
        active = self.store.slot_version(name, "active")
        for version in (active, record.target_version):
            if version is None:
                continue
            try:
                return self.store.manifest(name, version)
            except (AgentError, OSError, ValueError):
                continue
        path = self.download_dir(record) / "manifest.json"
        if record.target_version is not None and path.is_file():
            try:
                return Manifest.from_json(path.read_bytes())
            except ValueError:  # a half-written or refused manifest: the endpoint's own shape check applies
                return None
        return None

    def self_test_failed(self, name: str) -> bool:
        """No version serves because the only one failed its self-test (no previous one to return to)."""
        record = self.lifecycle.load(name)
        return record.state in TERMINAL and (record.reason or "").startswith("self-test failed")

    def window_closed(self, summary: TelemetrySummary) -> None:
        """Drift (computed when scraped: agent.metrics.DriftGauges) and accuracy gauges of the window that just
        closed (telemetry thread)."""
        served = self.serving.get(summary.model) if summary.unit == "model" else None  # a pipeline's: no baseline
        if served is None or served.model.manifest is None or served.version != summary.version:
            return
        baseline = served.model.manifest.baseline
        self.metrics.drift.window_closed(summary.model, lambda: drift_report(baseline, summary))
        accuracy = summary.accuracy()
        if accuracy is not None:
            self.metrics.window_accuracy.labels(summary.model).set(accuracy)


def serving_path(
    settings: AgentSettings,
    device_id: str,
    profile: str,
    mqtt: MqttSession,
    context: ServingContext,
    events: EventLog | None = None,
) -> tuple[Recorders, InferenceService, TelemetryUplink]:
    """The recorders, the inference service (fallback routers) and the telemetry uplink of one daemon."""
    tele = settings.telemetry
    recorders = Recorders(device_id, profile, window_size=tele.window_size, window_seconds=tele.window_s)
    uplink = TelemetryUplink(
        tele,
        recorders,
        outbox_path=settings.data_dir / "outbox.sqlite",
        device_id=device_id,
        publish=lambda payload: mqtt.publish(Channel.TELEMETRY, payload),
        connected=mqtt.connected.is_set,
        on_closed=context.window_closed,
        events=events,
        publish_event=lambda payload: mqtt.publish(Channel.EVENTS, payload),
    )
    inference = InferenceService(
        context.serving,
        context.metrics,
        recorders,
        endpoints=settings.fallback,
        policies=settings.fallback_policy,
        online=mqtt.connected.is_set,
        self_test_failed=context.self_test_failed,
        manifest_of=context.manifest_of,
        on_window_full=uplink.wake,
    )
    return recorders, inference, uplink
