"""Fetching a shadow candidate: the update's own download, verify and stage steps, into a store of its own.

    <data_dir>/shadow/models/<model>/versions/<v>/   the verified candidate (a ModelStore; only `staged` is set)
    <data_dir>/shadow/downloads/<model>/<v>/         its download (resumed from `<artifact>.part`, as an update's)
    <data_dir>/shadow/starts/<model>.json            how often it was started without a clean stop

`ShadowSteps` is `DeviceSteps` (TUF metadata, signed manifest, the same downloader with resume, bandwidth cap and
retries, signed patches from the versions the serving store holds) with another store and download directory; it
never activates, self-tests or serves anything. The fetch is a short lifecycle, a table like agent/lifecycle.py's,
not persisted: the hub's retained desired state asks again after a restart, the download resumes and a staged
candidate is loaded without a second download. What is persisted is a start counter: a candidate that takes the
agent down while it loads or runs (a runtime crash) is given up after MAX_STATE_ENTRIES starts, never a crash loop.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

from agent.errors import AgentError
from agent.fsutil import atomic_write
from agent.lifecycle import MAX_STATE_ENTRIES, Ev, UpdateRecord
from agent.model import LoadedModel
from agent.serving import ServingRegistry
from agent.settings import AgentSettings
from agent.steps import DeviceSteps
from agent.store import ModelStore
from firmware_profiles import FirmwareProfile
from protocol.http import EnrollResponse
from protocol.manifest import Manifest

log = logging.getLogger(__name__)


class ShadowState(StrEnum):
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGING = "staging"
    LOADING = "loading"
    RUNNING = "running"
    FAILED = "failed"


_STEPS = (ShadowState.DOWNLOADING, ShadowState.VERIFYING, ShadowState.STAGING, ShadowState.LOADING)
TRANSITIONS: dict[tuple[ShadowState, Ev], ShadowState] = {
    (ShadowState.DOWNLOADING, Ev.DOWNLOADED): ShadowState.VERIFYING,
    (ShadowState.VERIFYING, Ev.VERIFIED): ShadowState.STAGING,
    (ShadowState.STAGING, Ev.STORED): ShadowState.LOADING,
    (ShadowState.LOADING, Ev.PASSED): ShadowState.RUNNING,
    **{(state, event): ShadowState.FAILED for state in _STEPS for event in (Ev.REFUSED, Ev.ERROR, Ev.FAILED)},
}


class ShadowSteps(DeviceSteps):
    """The update steps into the shadow store; `load` instead of activation (the candidate is never served)."""

    def __init__(
        self,
        settings: AgentSettings,
        profile: FirmwareProfile,
        identity: EnrollResponse,
        *,
        serving_store: ModelStore,
        wait: Callable[[float], bool],
        superseded: Callable[[UpdateRecord], str | None],
    ) -> None:
        self.root = settings.data_dir / "shadow"
        super().__init__(settings, profile, identity, ModelStore(self.root / "models"), ServingRegistry(),
                         _log_progress, wait, superseded=superseded)  # fmt: skip
        self.serving_store = serving_store
        self.loaded: dict[str, tuple[LoadedModel, Manifest]] = {}  # taken by the manager once `load` passed

    def workdir(self, record: UpdateRecord) -> Path:
        return self.root / "downloads" / record.name / str(record.target_version)

    @property
    def patch_base(self) -> ModelStore:
        return self.serving_store  # a patch starts from a version this device serves (or served before)

    def load(self, record: UpdateRecord) -> Ev:
        """Load the staged candidate for the shadow worker, unless it was started too often without a clean stop."""
        assert record.target_version is not None
        starts = self.starts(record.name, record.target_version) + 1
        if starts > MAX_STATE_ENTRIES:
            record.reason = (f"started {starts - 1} times without a clean stop (did loading or running it take the "
                             "agent down?); not started again")  # fmt: skip
            return Ev.FAILED
        atomic_write(self._starts_file(record.name), json.dumps({"version": record.target_version, "starts": starts}
                                                                ).encode())  # fmt: skip
        try:
            manifest = self.store.manifest(record.name, record.target_version)
            artifact = self.store.artifact(record.name, record.target_version)
            model = LoadedModel.from_file(artifact, threads=self.profile.threads, manifest=manifest)
        except AgentError as e:  # a clean refusal by the runtime, not a start that took the agent down
            self.stopped_cleanly(record.name)
            record.reason = f"cannot load: {e}"
            return Ev.FAILED
        self.loaded[record.name] = (model, manifest)
        return Ev.PASSED

    def starts(self, name: str, version: int) -> int:
        try:
            held = json.loads(self._starts_file(name).read_bytes())
        except (OSError, ValueError):
            return 0
        return int(held.get("starts", 0)) if isinstance(held, dict) and held.get("version") == version else 0

    def stopped_cleanly(self, name: str) -> None:
        self._starts_file(name).unlink(missing_ok=True)

    def _starts_file(self, name: str) -> Path:
        folder = self.root / "starts"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{name}.json"

    def discard(self, name: str, keep: int | None = None) -> None:
        """Delete the candidate files of `name` (all, or all but version `keep`)."""
        held = self.store.slot_version(name, "staged")
        if keep is None or (held is not None and held != keep):
            self.store.remove(name)
        else:
            self.store.collect_garbage(name)
        downloads = self.root / "downloads" / name
        for folder in downloads.iterdir() if downloads.is_dir() else ():
            if keep is None or folder.name != str(keep):
                shutil.rmtree(folder, ignore_errors=True)
        if keep is None:
            shutil.rmtree(downloads, ignore_errors=True)
            self.stopped_cleanly(name)

    def names(self) -> set[str]:
        """Every model with candidate files on disk."""
        found = set(self.store.names())
        downloads = self.root / "downloads"
        if downloads.is_dir():
            found |= {p.name for p in downloads.iterdir() if p.is_dir()}
        return found


def fetch(steps: ShadowSteps, record: UpdateRecord, on_state: Callable[[ShadowState], None]) -> ShadowState:
    """Run the candidate of `record` through the table to RUNNING (loaded: `steps.loaded`) or FAILED (the reason
    in the record). A candidate staged before (an earlier start) is loaded without downloading it again."""
    assert record.target_version is not None
    actions: dict[ShadowState, Callable[[UpdateRecord], Ev]] = {
        ShadowState.DOWNLOADING: steps.download,
        ShadowState.VERIFYING: steps.verify,
        ShadowState.STAGING: steps.stage,
        ShadowState.LOADING: steps.load,
    }
    staged = steps.store.installed(record.name, record.target_version)
    state = ShadowState.LOADING if staged else ShadowState.DOWNLOADING
    while state in actions:
        on_state(state)
        state = TRANSITIONS[(state, actions[state](record))]
    return state


def _log_progress(kind: str, record: UpdateRecord, details: dict[str, Any]) -> None:
    """Download progress of a candidate: logged (a shadow has no lifecycle events of its own)."""
    if kind == "retrying":
        log.info("shadow %s v%s: %s", record.name, record.target_version, record.reason)
    else:
        log.info("shadow %s v%s: %s %s", record.name, record.target_version, kind, details)
