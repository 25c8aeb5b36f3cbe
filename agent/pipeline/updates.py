"""The update steps of a pipeline version: the model steps (agent/steps.py) over a whole stage set.

Download fetches the signed pipeline manifest, then every stage's manifest and artifact (each resumable);
verify checks each file against the signed metadata; stage publishes one version directory holding them all
(agent/pipeline/store.py); activate swaps one symlink; the self-test runs each stage's own golden cases, the
wiring check and the pipeline's end-to-end cases before the set serves. Nothing of a new version serves
before all of it has passed, and a failure anywhere rolls the whole set back with the stage named.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from agent.errors import (
    AgentError,
    DigestMismatch,
    Interrupted,
    OlderVersion,
    ProfileMismatch,
    RefusedUpdate,
    RuntimeMissing,
    SelfTestFailed,
)
from agent.fsutil import atomic_write
from agent.lifecycle import Ev, UpdateRecord
from agent.pipeline.golden import case_feeds
from agent.pipeline.serving import PipelineRegistry, load_pipeline, self_test_pipeline
from agent.pipeline.store import PIPELINE_FILE, STAGES_DIR, PipelineStore
from agent.runtimes import INSTALL_HINT, runtime_for_format, runtime_installed
from agent.steps import DeviceSteps
from agent.store import SlotStore
from protocol.http import artifact_target
from protocol.manifest import Manifest
from protocol.pipeline import PipelineManifest, PipelineStage


class PipelineSteps(DeviceSteps):
    """`UpdateSteps` for pipelines: the model steps' retry, supersede and TUF machinery, over a stage set."""

    def __init__(self, *args: Any, pipelines: PipelineStore, served: PipelineRegistry, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pipelines = pipelines
        self.served = served

    @property
    def slots(self) -> SlotStore:
        return self.pipelines  # `activate` (DeviceSteps') swaps the whole stage set's symlink

    def workdir(self, record: UpdateRecord) -> Path:
        return self.settings.data_dir / "pipeline-downloads" / record.name / str(record.target_version)

    def spec_file(self, name: str) -> Path:
        """The newest verified spec of pipeline `name` (kept until the pipeline is uninstalled)."""
        return self.settings.data_dir / "pipeline-specs" / f"{name}.json"

    def _pipeline_manifest(self, record: UpdateRecord) -> PipelineManifest:
        path = self.workdir(record) / PIPELINE_FILE
        try:
            manifest = PipelineManifest.from_json(path.read_bytes())
        except ValidationError as e:
            raise RefusedUpdate(f"invalid pipeline manifest: {e.errors()[0]['msg']}") from e
        if manifest.profile != self.profile.name:
            raise ProfileMismatch(
                f"pipeline built for profile {manifest.profile!r}, this device is {self.profile.name!r}"
            )
        if (manifest.name, manifest.version) != (record.name, record.target_version):
            raise RefusedUpdate(
                f"pipeline manifest is {manifest.name} v{manifest.version}, "
                f"desired {record.name} v{record.target_version}"
            )
        active = self.pipelines.slot_version(record.name, "active")
        if active is not None and manifest.version < active and not record.explicit_rollback:
            raise OlderVersion(f"v{manifest.version} is older than installed v{active} and not an explicit rollback")
        return manifest

    def _stage_manifest(self, record: UpdateRecord, stage: str, ref: PipelineStage) -> Manifest:
        path = self.workdir(record) / STAGES_DIR / stage / "manifest.json"
        try:
            manifest = Manifest.from_json(path.read_bytes())
        except ValidationError as e:
            raise RefusedUpdate(f"stage {stage!r}: invalid manifest: {e.errors()[0]['msg']}") from e
        if (manifest.name, manifest.version) != (ref.model, ref.version):
            raise RefusedUpdate(f"stage {stage!r}: manifest is {manifest.name} v{manifest.version}, the pipeline pins "
                                f"{ref.model} v{ref.version}")  # fmt: skip
        if manifest.profile != self.profile.name or manifest.format not in self.profile.formats:
            raise ProfileMismatch(f"stage {stage!r}: {manifest.format.value} artifact for profile {manifest.profile!r} "
                                  f"does not run on {self.profile.name!r}")  # fmt: skip
        runtime = runtime_for_format(manifest.format.value)
        if not runtime_installed(runtime):
            raise RuntimeMissing(f"stage {stage!r}: {manifest.format.value} needs {runtime}, which is not installed: "
                                 f"{INSTALL_HINT[runtime]}")  # fmt: skip
        return manifest

    def download(self, record: UpdateRecord) -> Ev:
        """The signed pipeline manifest, then each stage's manifest and artifact (a cut download resumes)."""

        def act() -> Ev:
            assert record.manifest_target is not None
            work = self.workdir(record)
            tuf = self.tuf()
            tuf.fetch_small_target(record.manifest_target, work / PIPELINE_FILE)
            manifest = self._pipeline_manifest(record)
            for stage, ref in manifest.stages.items():
                folder = work / STAGES_DIR / stage
                tuf.fetch_small_target(ref.manifest_target, folder / "manifest.json")
                m = self._stage_manifest(record, stage, ref)
                info = tuf.target_info(artifact_target(m.name, m.version, m.profile, m.artifact.file))
                if (info.length, info.hashes.get("sha256")) != (m.artifact.size, m.artifact.sha256):
                    raise DigestMismatch(
                        f"stage {stage!r}: the manifest's artifact size/sha256 differ from the signed metadata"
                    )
                if (folder / m.artifact.file).exists():
                    continue  # downloaded and verified before a restart
                part = folder / f"{m.artifact.file}.part"
                have = part.stat().st_size if part.exists() else 0
                details = {"stage": stage, "offset": have, "length": info.length}
                self.notify("download_resumed" if have else "download_started", record, details)
                self.downloader.fetch(tuf.target_url(info), part, info.length)
            return Ev.DOWNLOADED

        return self._guard(record, act, Ev.REFUSED, supersedable=True)

    def verify(self, record: UpdateRecord) -> Ev:
        """Every file against its signed length and sha256 (after a fresh metadata refresh)."""

        def act() -> Ev:
            assert record.manifest_target is not None
            work = self.workdir(record)
            tuf = self.tuf()
            tuf.verify_file(tuf.target_info(record.manifest_target), work / PIPELINE_FILE)
            manifest = self._pipeline_manifest(record)
            for stage, ref in manifest.stages.items():
                folder = work / STAGES_DIR / stage
                tuf.verify_file(tuf.target_info(ref.manifest_target), folder / "manifest.json")
                m = self._stage_manifest(record, stage, ref)
                info = tuf.target_info(artifact_target(m.name, m.version, m.profile, m.artifact.file))
                part, final = folder / f"{m.artifact.file}.part", folder / m.artifact.file
                candidate = part if part.exists() else final
                try:
                    tuf.verify_file(info, candidate)
                except DigestMismatch as e:
                    candidate.unlink(missing_ok=True)  # never resume from bytes that failed verification
                    raise DigestMismatch(f"stage {stage!r}: {e}") from e
                if candidate == part:
                    part.replace(final)
            # The newest verified spec stays known after the version is gone (a failed first install), so the
            # cloud fallback still knows the pipeline's outputs.
            atomic_write(self.spec_file(record.name), manifest.spec.to_bytes())
            return Ev.VERIFIED

        return self._guard(record, act, Ev.REFUSED, supersedable=True)

    def stage(self, record: UpdateRecord) -> Ev:
        """One complete version directory with the whole stage set (staged slot)."""

        def act() -> Ev:
            assert record.target_version is not None
            work = self.workdir(record)
            if not self.pipelines.installed(record.name, record.target_version):
                manifest = self._pipeline_manifest(record)
                self.pipelines.stage(manifest, (work / PIPELINE_FILE).read_bytes(), work)
            shutil.rmtree(work, ignore_errors=True)
            return Ev.STORED

        return self._guard(record, act, Ev.ERROR)

    def self_test(self, record: UpdateRecord) -> Ev:
        """Each stage's self-test, the wiring, the end-to-end golden cases; then the whole set serves at once."""
        assert record.target_version is not None
        try:
            runner = self_test_pipeline(
                self.pipelines, record.name, record.target_version, self.profile, self.settings.latency_basis
            )
        except (SelfTestFailed, AgentError) as e:
            record.reason = f"self-test failed: {e}"
            return Ev.FAILED
        self.served.install(record.name, record.target_version, runner)
        return Ev.PASSED

    def probation(self, record: UpdateRecord) -> Ev:
        """Serve for `probation_s`; fail on serving errors or a golden case turning non-finite."""
        assert record.target_version is not None
        served = self.served.get(record.name)
        if served is None or served.version != record.target_version:  # restarted during probation
            event = self.self_test(record)
            served = self.served.get(record.name)
            if event is not Ev.PASSED or served is None:
                return event
        errors_before = served.errors
        if self.wait(self.settings.probation_s):
            raise Interrupted("agent stopping during probation")
        golden = self.pipelines.manifest(record.name, record.target_version).golden
        if golden is not None:
            try:
                served.runner.reset()
                outputs = served.runner.run(case_feeds(golden.cases[0])).outputs
                served.runner.reset()
            except AgentError as e:
                record.reason = f"probation: pipeline failed: {e}"
                return Ev.FAILED
            if not all(np.isfinite(v).all() for v in outputs.values()):
                record.reason = "probation: non-finite pipeline output"
                return Ev.FAILED
        if served.errors > errors_before:
            record.reason = f"probation: {served.errors - errors_before} pipeline errors"
            return Ev.FAILED
        self.pipelines.collect_garbage(record.name)
        return Ev.PASSED

    def roll_back(self, record: UpdateRecord) -> Ev:
        """Re-point `active` at the set that served before and serve it again (or nothing, on a first install)."""

        def act() -> Ev:
            self.pipelines.roll_back(record.name, record.from_version)
            if record.from_version is None:
                self.served.remove(record.name)
            else:
                served = self.served.get(record.name)
                if served is None or served.version != record.from_version:
                    runner = load_pipeline(self.pipelines, record.name, record.from_version, self.profile.threads)
                    self.served.install(record.name, record.from_version, runner)
            self.pipelines.collect_garbage(record.name)
            return Ev.DONE

        return self._guard(record, act, Ev.ERROR)
