"""Pipelines that answer: load a stored version (every stage, the wiring checked), self-test it, serve it."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agent.errors import AgentError, SelfTestFailed
from agent.model import LoadedModel
from agent.pipeline.golden import check_golden
from agent.pipeline.runner import PipelineRunner, stage_io
from agent.pipeline.store import PipelineStore
from agent.selftest import run_self_test
from firmware_profiles import FirmwareProfile
from protocol.pipeline import PipelineSpecError, check_wiring


@dataclass
class ServedPipeline:
    """One pipeline version answering predictions, with its counters."""

    name: str
    version: int
    runner: PipelineRunner
    since: datetime = field(default_factory=lambda: datetime.now(UTC))
    requests: int = 0
    errors: int = 0


class PipelineRegistry:
    """Thread-safe name -> served pipeline map; `install` swaps a whole stage set in one assignment."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pipelines: dict[str, ServedPipeline] = {}

    def install(self, name: str, version: int, runner: PipelineRunner) -> ServedPipeline:
        served = ServedPipeline(name, version, runner)
        with self._lock:
            self._pipelines[name] = served
        return served

    def remove(self, name: str) -> None:
        with self._lock:
            self._pipelines.pop(name, None)

    def get(self, name: str) -> ServedPipeline | None:
        with self._lock:
            return self._pipelines.get(name)

    def all(self) -> list[ServedPipeline]:
        with self._lock:
            return list(self._pipelines.values())


def _runner(store: PipelineStore, name: str, version: int, models: dict[str, LoadedModel]) -> PipelineRunner:
    spec = store.manifest(name, version).spec
    try:
        check_wiring(spec, {stage: stage_io(model) for stage, model in models.items()})
    except PipelineSpecError as e:
        raise SelfTestFailed(f"wiring: {e}") from e
    return PipelineRunner(spec, models)


def load_pipeline(store: PipelineStore, name: str, version: int, threads: int) -> PipelineRunner:
    """An installed version ready to serve (no self-test: it passed when it was activated)."""
    manifest = store.manifest(name, version)
    models = {}
    for stage in manifest.stages:
        stage_manifest = store.stage_manifest(name, version, stage)
        path = store.stage_dir(name, version, stage) / stage_manifest.artifact.file
        models[stage] = LoadedModel.from_file(path, threads=threads, manifest=stage_manifest)
    return _runner(store, name, version, models)


def self_test_pipeline(
    store: PipelineStore, name: str, version: int, profile: FirmwareProfile, latency_basis: str = "host"
) -> PipelineRunner:
    """Each stage's own self-test (its golden cases, NaN/inf, latency budget), then the wiring, then the pipeline's
    end-to-end golden cases. `SelfTestFailed` names the stage or the case that failed."""
    manifest = store.manifest(name, version)
    models = {}
    for stage, ref in manifest.stages.items():
        try:
            stage_manifest = store.stage_manifest(name, version, stage)
            path = store.stage_dir(name, version, stage) / stage_manifest.artifact.file
            models[stage], _ = run_self_test(stage_manifest, path, profile, latency_basis)
        except AgentError as e:
            raise SelfTestFailed(f"stage {stage!r} ({ref.model} v{ref.version}): {e}") from e
    runner = _runner(store, name, version, models)
    if manifest.golden is not None:
        check_golden(runner, manifest.golden)
    return runner
