"""The daemon's pipelines as update units: the store whose versions hold whole stage sets, a lifecycle per
pipeline, its steps, what serves now, and what the daemon says about them (models have the same parts on the
daemon itself; agent/daemon.py runs both through the same worker)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from agent.errors import AgentError
from agent.lifecycle import TERMINAL, Lifecycle, Transition, UpdateRecord
from agent.pipeline.serving import PipelineRegistry, load_pipeline
from agent.pipeline.store import PipelineStore
from agent.pipeline.updates import PipelineSteps
from agent.reporting import reported_units
from agent.serving import ServingRegistry
from agent.settings import AgentSettings
from agent.steps import Notify
from agent.store import ModelStore
from firmware_profiles import FirmwareProfile
from protocol.http import EnrollResponse
from protocol.messages import Event, EventKind, ReportedModel
from protocol.messages import LifecycleState as State
from protocol.pipeline import PipelineManifest, PipelineSpec

log = logging.getLogger(__name__)


class PipelineUnits:
    """Every pipeline on the device: installed, updating, serving."""

    def __init__(
        self,
        settings: AgentSettings,
        profile: FirmwareProfile,
        identity: EnrollResponse,
        models: ModelStore,
        serving: ServingRegistry,
        *,
        notify: Notify,
        on_transition: Transition,
        on_saved: Callable[[UpdateRecord], None],
        wait: Callable[[float], bool],
        superseded: Callable[[UpdateRecord], str | None],
        emit: Callable[..., Event],
    ) -> None:
        self.threads = profile.threads
        self.store = PipelineStore(settings.data_dir / "pipelines")
        self.served = PipelineRegistry()
        self.steps = PipelineSteps(
            settings, profile, identity, models, serving, notify, wait,
            superseded=superseded, pipelines=self.store, served=self.served,
        )  # fmt: skip
        self.lifecycle = Lifecycle(settings.data_dir / "pipeline-lifecycle", self.steps, on_transition, on_saved)
        self._emit = emit

    def serve_active(self, name: str) -> None:
        """At start: serve the active set; mid-update, the set that passed before (as for models)."""
        version = self.store.slot_version(name, "active")
        record = self.lifecycle.load(name)
        if record.state in (State.ACTIVATING, State.SELF_TEST, State.ROLLING_BACK):
            version = record.from_version
        if version is None:
            return
        try:
            runner = load_pipeline(self.store, name, version, self.threads)
        except AgentError as e:
            log.error("cannot serve pipeline %s v%s: %s", name, version, e)
            return
        self.served.install(name, version, runner)

    def uninstall(self, name: str, reason: str) -> None:
        """A pipeline the hub no longer wants: stop serving it, delete its versions and its record."""
        record = self.lifecycle.load(name)
        if record.state not in TERMINAL:
            return  # an interrupted update finishes first (resumed at start); the next reconcile removes it
        version = self.store.slot_version(name, "active")
        self.served.remove(name)
        self.store.remove(name)
        self.lifecycle.forget(name)
        self.steps.spec_file(name).unlink(missing_ok=True)
        self._emit(EventKind.UNINSTALLED, pipeline=name, version=version, reason=reason)

    def spec(self, name: str) -> PipelineSpec | None:
        """The newest spec known for `name`: the active version's, else the one being downloaded."""
        record = self.lifecycle.load(name)
        for version in (self.store.slot_version(name, "active"), record.target_version):
            if version is not None and self.store.installed(name, version):
                with contextlib.suppress(AgentError):
                    return self.store.manifest(name, version).spec
        path = self.steps.workdir(record) / "pipeline.json"
        if record.target_version is not None and path.is_file():
            with contextlib.suppress(ValueError):
                return PipelineManifest.from_json(path.read_bytes()).spec
        with contextlib.suppress(OSError, ValueError):
            return PipelineSpec.from_json(self.steps.spec_file(name).read_bytes())
        return None

    def self_test_failed(self, name: str) -> bool:
        record = self.lifecycle.load(name)
        return record.state in TERMINAL and (record.reason or "").startswith("self-test failed")

    def reported(self) -> list[ReportedModel]:
        return reported_units(self.store, self.lifecycle, self.served)

    def view(self) -> list[dict[str, Any]]:
        """Each pipeline's lifecycle, and the stages of the version serving now."""
        out = []
        for unit in self.reported():
            view = unit.model_dump(mode="json")
            served = self.served.get(unit.name)
            if served is not None:  # one object: the version serving and its stages, read together
                view["serving_version"] = served.version
                view["stages"] = {s.name: {"model": s.model, "version": s.version} for s in served.runner.spec.stages}
            out.append(view)
        return out

    def close(self) -> None:
        self.steps.close()
