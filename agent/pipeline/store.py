"""Pipelines on disk: one version directory holds the whole stage set, so one symlink swap activates it.

    <root>/<name>/versions/<v>/pipeline.json                     the signed pipeline manifest (written last)
    <root>/<name>/versions/<v>/stages/<stage>/manifest.json      each stage's signed model manifest
    <root>/<name>/versions/<v>/stages/<stage>/<artifact>         and its artifact
    <root>/<name>/active | previous | staged -> versions/<v>     as for models (agent/store.py)

A kill -9 at any instant leaves `active` on the old directory or the new one: the old stage set or the new,
never a mix, because no stage file is ever shared between versions or changed in place.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from agent.errors import StoreError
from agent.store import SlotStore
from protocol.manifest import Manifest
from protocol.pipeline import PipelineManifest

PIPELINE_FILE = "pipeline.json"
STAGES_DIR = "stages"


class PipelineStore(SlotStore):
    """Installed pipeline versions by name, with active, previous and staged slots."""

    MARKER = PIPELINE_FILE

    def manifest(self, name: str, version: int) -> PipelineManifest:
        path = self.version_dir(name, version) / PIPELINE_FILE
        try:
            return PipelineManifest.from_json(path.read_bytes())
        except (OSError, ValueError) as e:
            raise StoreError(f"pipeline {name} v{version}: unreadable {PIPELINE_FILE}: {e}") from e

    def stage_dir(self, name: str, version: int, stage: str) -> Path:
        return self.version_dir(name, version) / STAGES_DIR / stage

    def stage_manifest(self, name: str, version: int, stage: str) -> Manifest:
        path = self.stage_dir(name, version, stage) / "manifest.json"
        try:
            return Manifest.from_json(path.read_bytes())
        except (OSError, ValueError) as e:
            raise StoreError(f"pipeline {name} v{version} stage {stage!r}: unreadable manifest: {e}") from e

    def stage(self, manifest: PipelineManifest, manifest_bytes: bytes, work: Path) -> Path:
        """Copy a verified download (`work/pipeline.json`, `work/stages/<stage>/...`) into a complete version
        directory and point `staged` at it; the pipeline manifest is written last."""

        def fill(tmp: Path) -> None:
            for stage in manifest.stages:
                src, dst = work / STAGES_DIR / stage, tmp / STAGES_DIR / stage
                dst.mkdir(parents=True)
                stage_manifest = Manifest.from_json((src / "manifest.json").read_bytes())
                shutil.copyfile(src / stage_manifest.artifact.file, dst / stage_manifest.artifact.file)
                shutil.copyfile(src / "manifest.json", dst / "manifest.json")
            (tmp / PIPELINE_FILE).write_bytes(manifest_bytes)

        return self.publish(manifest.name, manifest.version, fill)
