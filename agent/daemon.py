"""The daemon: reconcile desired state into lifecycle runs, report state and events, serve the API."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from agent.enroll import ensure_identity
from agent.fsutil import remove_crash_leftovers
from agent.inference import Prediction
from agent.lifecycle import TERMINAL, Ev, Lifecycle, UpdateRecord
from agent.memory import release_free_memory
from agent.metrics import AgentMetrics
from agent.mqtt import MqttSession
from agent.pipeline.inference import PipelineAnswer, PipelineInference
from agent.pipeline.units import PipelineUnits
from agent.reporting import EventLog, event_for_transition, reported_state
from agent.runtimes import INSTALL_HINT, installed_runtimes, runtime_for_format, runtime_installed
from agent.serving import ServingRegistry
from agent.servingcontext import ServingContext, serving_path
from agent.settings import AgentSettings
from agent.shadow.manager import ShadowManager
from agent.steps import DeviceSteps
from agent.store import ModelStore, SlotStore
from firmware_profiles import get_profile
from protocol.messages import (
    MAX_PAYLOAD_BYTES,
    Ack,
    Command,
    CommandKind,
    DesiredModel,
    DesiredPipeline,
    DesiredState,
    Event,
    EventKind,
    ReportedState,
)
from protocol.messages import LifecycleState as State
from protocol.topics import Channel

if TYPE_CHECKING:
    from agent.api import LocalApi

log = logging.getLogger(__name__)

RETRY_REPORT_EVERY_S = 10.0


class Agent:
    """One device agent: owns the store, the lifecycle, the MQTT session and the serving registry."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.profile = get_profile(settings.profile, settings.profiles_dir)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.identity = ensure_identity(settings)
        self.device_id = self.identity.device_id
        self.metrics = AgentMetrics()
        self.store = ModelStore(settings.data_dir / "models")
        self.serving = ServingRegistry()
        self._stop = threading.Event()
        self.steps = DeviceSteps(
            settings, self.profile, self.identity, self.store, self.serving, self._notify, self._stop.wait,
            superseded=self._superseded, local_copy=lambda manifest: self.shadows.verified_copy(manifest),
        )  # fmt: skip
        self.lifecycle = Lifecycle(
            settings.data_dir / "lifecycle", self.steps, self._on_transition, lambda _record: self.report()
        )
        # Pipelines are units of their own: a store whose versions hold whole stage sets, a lifecycle per pipeline.
        self.pipelines = PipelineUnits(
            settings, self.profile, self.identity, self.store, self.serving, notify=self._notify_pipeline,
            on_transition=self._on_pipeline_transition, on_saved=lambda _record: self.report(), wait=self._stop.wait,
            superseded=self._pipeline_superseded, emit=self.emit,
        )  # fmt: skip
        self._work: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.desired: DesiredState | None = None
        # The desired state received last (set by the MQTT thread before the worker takes it up): an update
        # still downloading that it no longer asks for ends at once (see DeviceSteps._guard).
        self.latest_desired: DesiredState | None = None
        self._retry_reported: dict[tuple[str, str], float] = {}  # (unit, name) -> when a retry was last reported
        self.reconciles = 0  # passes of `reconcile` (tests wait on it)
        self.applied_generation = 0
        self.rejected = 0
        self._details: dict[tuple[str, str], dict[str, Any]] = {}
        mqtt = self.identity.mqtt
        self.mqtt = MqttSession(
            device_id=self.device_id,
            host=settings.mqtt_host or mqtt.host,
            port=settings.mqtt_port or mqtt.port,
            tls=mqtt.tls if settings.mqtt_tls is None else settings.mqtt_tls,
            ca_file=settings.mqtt_ca_file,
            client_cert_file=settings.client_cert_file,
            client_key_file=settings.client_key_file,
            username=mqtt.username or None,
            password=mqtt.password or None,
            root=settings.topic_root,
            on_message=self._on_message,
            on_connected=self._on_connected,
            keepalive_s=settings.keepalive_s,
            backoff=(settings.reconnect_min_s, settings.reconnect_max_s),
        )
        tele = settings.telemetry
        self.events = EventLog(
            self.device_id,
            settings.data_dir,
            self.metrics,
            max_bytes=tele.events_max_bytes,
            max_age_s=tele.outbox_max_age_s,
        )
        self.context = ServingContext(self.store, self.lifecycle, self.serving, self.metrics, self.steps.workdir)
        self.recorders, self.inference, self.uplink = serving_path(
            settings, self.device_id, self.profile.name, self.mqtt, self.context, self.events
        )
        self.pipeline_inference = PipelineInference(
            self.pipelines.served, self.metrics, self.recorders, self.uplink.wake,
            endpoints=settings.pipeline_fallback, policies=settings.pipeline_fallback_policy,
            online=self.mqtt.connected.is_set, spec_of=self.pipelines.spec,
            self_test_failed=self.pipelines.self_test_failed,
        )  # fmt: skip
        # Candidates under shadow evaluation (agent/shadow/): fetched by the reconcile worker, fed by the serving path.
        self.shadows = ShadowManager(
            settings, self.profile, self.identity, serving_store=self.store, metrics=self.metrics, emit=self.emit,
            wait=self._stop.wait, latest=lambda: self.latest_desired,
        )  # fmt: skip
        self.inference.shadows = self.shadows.active
        self._worker = threading.Thread(target=self._run_worker, name="reconcile", daemon=True)

    # ---- start / stop -------------------------------------------------------------------------
    def start(self) -> None:
        """Serve what is active, finish interrupted updates, then connect."""
        for fmt in self.profile.formats:
            runtime = runtime_for_format(fmt.value)
            if not runtime_installed(runtime):
                log.warning("profile %s runs %s models but %s is not installed: %s; such updates will be refused",
                            self.profile.name, fmt.value, runtime, INSTALL_HINT[runtime])  # fmt: skip
        data_dir = self.settings.data_dir
        files, size = remove_crash_leftovers(data_dir)  # before anything writes there (models/.*.removed too)
        if files:
            amount = f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size} bytes"
            plural = "" if files == 1 else "s"
            log.info("start-up: removed %d file%s (%s) a crash left in %s", files, plural, amount, data_dir)
        for name in self.store.names():
            self.context.serve_active(name, self.profile.threads)
        for name in self.pipelines.store.names():
            self.pipelines.serve_active(name)
        for name in self.lifecycle.names():
            if self.lifecycle.load(name).state not in TERMINAL:
                self._work.put(("resume", name))
        for name in self.pipelines.lifecycle.names():
            if self.pipelines.lifecycle.load(name).state not in TERMINAL:
                self._work.put(("resume_pipeline", name))
        self.uplink.start()  # first: an unusable outbox stops the start before any update resumes
        release_free_memory()  # what loading the active models freed (see agent/memory.py)
        self._worker.start()
        self.mqtt.start()

    def stop(self) -> None:
        self._stop.set()
        self._work.put(("stop", None))
        self._worker.join(timeout=10)
        self.shadows.stop()  # their open windows go to the events outbox
        self.uplink.stop()  # open windows go to the outbox; they are sent after the next start
        self.mqtt.stop()
        self.steps.close()
        self.pipelines.close()
        self.events.close()

    # ---- incoming messages (MQTT thread: validate, count, enqueue; never raise) -------------------
    def _on_connected(self) -> None:
        self._work.put(("report", None))
        self.uplink.reconnected()

    def _on_message(self, channel: Channel, payload: bytes) -> None:
        try:
            if len(payload) > MAX_PAYLOAD_BYTES:
                raise ValueError(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD_BYTES}")
            if channel is Channel.ACK:
                ack = Ack.from_json(payload)
                if ack.channel == "telemetry":
                    self.uplink.ack(ack.ids)
                else:
                    self.uplink.ack_events(ack.ids)
                return
            if channel is Channel.DESIRED:
                if not payload:
                    return  # retained message cleared
                desired = DesiredState.from_json(payload)
                if desired.device_id != self.device_id:
                    raise ValueError(f"desired state for device {desired.device_id!r}")
                self.latest_desired = desired
                self._work.put(("desired", desired))
            else:
                self._work.put(("command", Command.from_json(payload)))
        except (ValidationError, ValueError) as e:
            self.reject(channel, e)

    def reject(self, channel: Channel, error: Exception) -> None:
        """Log, count and report a malformed message."""
        self.rejected += 1
        self.metrics.rejected.labels(channel.value).inc()
        reason = str(error).splitlines()[0][:300]
        log.warning("rejected %s message: %s", channel.value, reason)
        self.emit(EventKind.MESSAGE_REJECTED, reason=reason, details={"channel": channel.value})

    # ---- the worker: one update at a time ------------------------------------------------------
    def _run_worker(self) -> None:
        while not self._stop.is_set():
            try:
                kind, item = self._work.get(timeout=self.settings.retry_failed_after_s)
            except queue.Empty:
                kind, item = "retry", None
            try:
                if kind == "stop":
                    return
                if kind == "resume":
                    self.lifecycle.run(self.lifecycle.load(item))
                elif kind == "resume_pipeline":
                    self.pipelines.lifecycle.run(self.pipelines.lifecycle.load(item))
                elif kind == "desired":
                    if self.latest_desired in (None, item):  # else a later one is queued behind: apply that one
                        self.desired = item
                        self.reconcile()
                elif kind == "retry" and self.desired is not None:
                    self.reconcile(retry_failed=True)
                elif kind == "rollback":
                    self.manual_rollback(item, "manual rollback (local API)")
                elif kind == "command":
                    self.handle_command(item)
                self.report()
                if kind != "report" and self._work.empty():
                    release_free_memory()  # an update at rest: its downloads, self-test and old model are freed
            except Exception:  # one bad update must not stop the worker; it is logged with its traceback
                log.exception("reconcile step failed")

    def reconcile(self, retry_failed: bool = False) -> None:
        """Start an update for every desired model and pipeline that is not what runs now."""
        desired = self.desired
        assert desired is not None
        self.reconciles += 1
        self._reconcile_units(self.lifecycle, self.store, desired.models, retry_failed, self.uninstall)
        units = self.pipelines
        self._reconcile_units(units.lifecycle, units.store, desired.pipelines, retry_failed, units.uninstall)
        self.shadows.reconcile(desired.shadows, desired.generation)  # after the updates: an activated candidate's
        self.applied_generation = desired.generation  # update could take its verified copy before it is deleted

    def _reconcile_units(
        self,
        lifecycle: Lifecycle,
        store: SlotStore,
        wants: list[DesiredModel] | list[DesiredPipeline],
        retry_failed: bool,
        uninstall: Any,
    ) -> None:
        desired = self.desired
        assert desired is not None
        for want in wants:
            record = lifecycle.load(want.name)
            if record.state not in TERMINAL:  # left mid-step (an earlier error): finish or undo it first
                record = lifecycle.run(record)
            if store.slot_version(want.name, "active") == want.version and record.state in TERMINAL:
                continue
            # Refused, failed or rolled back (by the agent or by hand) in this generation: not retried until the
            # hub publishes a new one (a download that failed is, on the idle retry pass).
            if record.generation == desired.generation and record.rejected_version == want.version:
                download_error = (record.reason or "").startswith(("DownloadError", "MetadataRefused: cannot reach"))
                if not (retry_failed and download_error):
                    continue
            record.target_version = want.version
            record.manifest_target = want.manifest_target if isinstance(want, DesiredModel) else want.pipeline_target
            record.explicit_rollback = want.rollback
            record.rollout_id = want.rollout_id
            record.generation = desired.generation
            record.from_version = store.slot_version(want.name, "active")
            record.reason = None
            record.rejected_version = None
            lifecycle.fire(record, Ev.UPDATE)
        wanted = {m.name for m in wants}
        for name in sorted(set(store.names()) | set(lifecycle.names())):
            if name not in wanted:
                uninstall(name, f"not in desired state generation {desired.generation}")

    def _superseded(self, record: UpdateRecord) -> str | None:
        """Why the newest desired state no longer asks for `record`'s update (None while it does)."""
        latest = self.latest_desired
        if latest is None or (record.generation is not None and latest.generation <= record.generation):
            return None
        return _superseded_by(record, latest.generation, latest.models)

    def _pipeline_superseded(self, record: UpdateRecord) -> str | None:
        latest = self.latest_desired
        if latest is None or (record.generation is not None and latest.generation <= record.generation):
            return None
        return _superseded_by(record, latest.generation, latest.pipelines)

    def uninstall(self, name: str, reason: str) -> None:
        """A model the hub no longer wants: stop serving it, delete its versions and its record."""
        record = self.lifecycle.load(name)
        if record.state not in TERMINAL:
            return  # an interrupted update finishes first (resumed at start); the next reconcile removes it
        version = self.store.slot_version(name, "active")
        self.serving.remove(name)
        self.store.remove(name)
        self.lifecycle.forget(name)
        with contextlib.suppress(KeyError):  # never served in this process
            self.metrics.active_version.remove(name)
        self.emit(EventKind.UNINSTALLED, model=name, version=version, reason=reason)

    def request_rollback(self, name: str) -> None:
        """Queue a manual rollback (from the local API)."""
        self._work.put(("rollback", name))

    def handle_command(self, command: Command) -> None:
        """Rollback on request; report state on request."""
        if command.kind is CommandKind.ROLLBACK:
            if command.model is None:
                self.emit(EventKind.FAILED, reason="rollback command names no model")
                return
            self.manual_rollback(command.model, f"manual rollback (command {command.command_id})")
        elif command.kind is CommandKind.FLUSH_TELEMETRY:
            self.uplink.flush()

    def manual_rollback(self, name: str, reason: str) -> UpdateRecord:
        """Return to the previous version of `name` through the lifecycle's rollback state."""
        record = self.lifecycle.load(name)
        previous = self.store.slot_version(name, "previous")
        if record.state not in TERMINAL or previous is None:
            why = (
                f"an update to v{record.target_version} is in {record.state.value}; roll back once it is at rest"
                if record.state not in TERMINAL
                else "no previous version"
            )
            self.emit(EventKind.FAILED, model=name, reason=f"cannot roll back {name}: {why}")
            return record
        record.rejected_version = self.store.slot_version(name, "active")
        record.generation = self.desired.generation if self.desired else record.generation
        record.target_version = previous
        record.from_version = previous
        record.reason = reason
        return self.lifecycle.fire(record, Ev.ROLLBACK_REQUESTED)

    # ---- reporting -----------------------------------------------------------------------------
    def _on_transition(self, record: UpdateRecord, before: State, event: Ev, after: State, unit: str = "model") -> None:
        """Store the transition's event for the hub (the lifecycle saves the new state after this)."""
        if after in (State.FAILED, State.ROLLED_BACK) and record.rejected_version is None:
            record.rejected_version = record.target_version
        kind = event_for_transition(before, event, after)
        if unit == "model" and (after is State.COMMITTED or after is State.ROLLED_BACK):
            served = self.serving.get(record.name)
            if served is not None:
                self.metrics.active_version.labels(record.name).set(served.version)
        if kind is not None:
            version = record.from_version if after is State.ROLLED_BACK else record.target_version
            self.emit(
                kind,
                **{unit: record.name},
                version=version,
                state=after,
                reason=record.reason,
                rollout_id=record.rollout_id,
                details=self._details.pop((unit, record.name), {}),
            )

    def _on_pipeline_transition(self, record: UpdateRecord, before: State, event: Ev, after: State) -> None:
        self._on_transition(record, before, event, after, unit="pipeline")

    def _notify(self, kind: str, record: UpdateRecord, details: dict[str, Any], unit: str = "model") -> None:
        if kind == "retrying":  # the hub is out of reach: say so in the reported state, at most every 10 s
            self.metrics.hub_retries.labels(record.name).inc()
            now = time.monotonic()
            if now - self._retry_reported.get((unit, record.name), float("-inf")) >= RETRY_REPORT_EVERY_S:
                self._retry_reported[(unit, record.name)] = now
                # The same state, with the reason; reported_state reads the records.
                (self.lifecycle if unit == "model" else self.pipelines.lifecycle).save(record)
                self.report()
            return
        events = {"download_started": EventKind.DOWNLOAD_STARTED, "download_resumed": EventKind.DOWNLOAD_RESUMED}
        if kind not in events:  # e.g. the self-test measurements: sent with the next state's event
            self._details[(unit, record.name)] = details
            return
        self.emit(
            events[kind],
            **{unit: record.name},
            version=record.target_version,
            state=record.state,
            rollout_id=record.rollout_id,
            details=details,
        )

    def _notify_pipeline(self, kind: str, record: UpdateRecord, details: dict[str, Any]) -> None:
        self._notify(kind, record, details, unit="pipeline")

    def emit(self, kind: EventKind, **fields: Any) -> Event:
        """Store one numbered event; it is sent until the hub acknowledges it."""
        return self.events.emit(kind, **fields)

    def reported_state(self) -> ReportedState:
        """What runs now and where each update stands."""
        return reported_state(
            device_id=self.device_id,
            profile=self.profile.name,
            applied_generation=self.applied_generation,
            store=self.store,
            lifecycle=self.lifecycle,
            serving=self.serving,
            pipelines=self.pipelines.reported(),
        )

    def report(self) -> None:
        self.mqtt.publish(Channel.REPORTED, self.reported_state().to_bytes(), retain=True)
        self.metrics.mqtt_connected.set(1 if self.mqtt.connected.is_set() else 0)
        for what, value in self.uplink.stats.items():
            self.metrics.outbox.labels(what).set(value)

    def models_view(self) -> list[dict[str, Any]]:
        return [m.model_dump(mode="json") for m in self.reported_state().models]

    def health_view(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "device_id": self.device_id,
            "mqtt_connected": self.mqtt.connected.is_set(),
            "serving": {s.name: s.version for s in self.serving.all()},
            "pipelines": {p.name: p.version for p in self.pipelines.served.all()},
            "rejected_messages": self.rejected,
            "runtimes": installed_runtimes(),
            "telemetry": self.uplink.view(),
            "shadows": self.shadows.view(),
        }

    # ---- serving and telemetry -----------------------------------------------------------------
    def local_api(self) -> LocalApi:
        """The local API over this daemon (agent/httpserver.py serves it)."""
        from agent.api import LocalApi

        return LocalApi(
            self.serving,
            self.metrics,
            self.models_view,
            self.health_view,
            self.request_rollback,
            inference=self.inference,
            pipelines=self.pipeline_inference,
            pipelines_view=self.pipelines.view,
        )

    def predict(self, name: str, inputs: dict[str, Any]) -> Prediction:
        """In-process prediction: the same path as the local API (fallback, telemetry)."""
        return self.inference.predict(name, inputs)

    def predict_pipeline(self, name: str, inputs: dict[str, Any]) -> PipelineAnswer:
        """One call of a pipeline: the device's answer with each node's time, or the cloud's."""
        return self.pipeline_inference.predict(name, inputs)


def _superseded_by(
    record: UpdateRecord, generation: int, wants: list[DesiredModel] | list[DesiredPipeline]
) -> str | None:
    want = next((m for m in wants if m.name == record.name), None)
    if want is None:
        return f"desired generation {generation} no longer has {record.name}"
    if (want.version, want.rollback) == (record.target_version, record.explicit_rollback):
        return None
    wanted = f"v{want.version}{' (rollback)' if want.rollback else ''}"
    return f"desired generation {generation} wants {record.name} {wanted}, not v{record.target_version}"
