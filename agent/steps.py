"""The action of each lifecycle state on a real device: TUF, download, store, self-test, serving."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import ValidationError

from agent.errors import (
    AgentError,
    DigestMismatch,
    DownloadError,
    Interrupted,
    OlderVersion,
    ProfileMismatch,
    RefusedUpdate,
    RuntimeMissing,
    SelfTestFailed,
    Superseded,
    Unreachable,
)
from agent.lifecycle import Ev, UpdateRecord
from agent.model import LoadedModel
from agent.runtimes import INSTALL_HINT, runtime_for_format, runtime_installed
from agent.selftest import case_inputs, run_self_test
from agent.serving import ServingRegistry
from agent.settings import AgentSettings
from agent.store import ModelStore, SlotStore
from agent.tls import hub_context, hub_failure

if TYPE_CHECKING:
    import httpx

    from agent.download import Downloader, RetryPolicy
    from agent.tufclient import TufClient
from firmware_profiles import FirmwareProfile
from protocol.http import EnrollResponse, artifact_target
from protocol.manifest import Manifest

log = logging.getLogger(__name__)

# The reason a model reports while a step waits to retry the hub (cleared once the step goes on).
RETRYING = "waiting for the hub: "

# (kind, record, details): lets the daemon report progress that is not a state change.
Notify = Callable[[str, UpdateRecord, dict[str, Any]], None]


class DeviceSteps:
    """Implements `UpdateSteps` against the hub's TUF repository and the on-disk A/B store."""

    def __init__(
        self,
        settings: AgentSettings,
        profile: FirmwareProfile,
        identity: EnrollResponse,
        store: ModelStore,
        serving: ServingRegistry,
        notify: Notify | None = None,
        wait: Callable[[float], bool] | None = None,
        superseded: Callable[[UpdateRecord], str | None] | None = None,
        local_copy: Callable[[Manifest], Path | None] | None = None,
    ) -> None:
        """`wait(seconds)` pauses and says True when the agent stops; `superseded(record)` says why a newer
        desired state no longer wants that update (None while it still does); `local_copy(manifest)` names a file
        on this device that should be the manifest's artifact (a candidate shadow-tested here), taken instead of a
        download and verified like one."""
        self.settings = settings
        self.profile = profile
        self.identity = identity
        self.store = store
        self.serving = serving
        self.notify = notify or _ignore
        self.wait = wait or _sleep  # returns True when asked to stop
        self.superseded = superseded or _never
        self.local_copy = local_copy or _nowhere
        self._active: UpdateRecord | None = None  # the update whose step runs now (checked while downloading)
        self._http: httpx.Client | None = None
        self._downloader: Downloader | None = None

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    @property
    def http(self) -> httpx.Client:
        """The hub client, created on the first update (httpx stays out of a steady-state daemon's memory)."""
        if self._http is None:
            import httpx

            timeout = httpx.Timeout(self.settings.read_timeout_s, connect=self.settings.connect_timeout_s)
            headers = {"Authorization": f"Bearer {self.identity.device_token}"}
            self._http = httpx.Client(timeout=timeout, headers=headers, verify=hub_context(self.settings))
        return self._http

    def _sleep_unless_stopping(self, seconds: float) -> None:
        """The downloader's pauses (bandwidth cap, retry backoff) end at once when the agent stops or a newer
        desired state supersedes the update (`_guard` tells the two apart)."""
        if self._pause(seconds):
            raise Interrupted("agent stopping or update superseded mid-download")

    def _pause(self, seconds: float) -> bool:
        """Wait up to `seconds`; True as soon as the agent stops or the update under way is superseded."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if self.wait(max(0.0, min(left, 0.25))) or self._superseded_now() is not None:
                return True
            if left <= 0.25:
                return False

    def _artifact_retry(self, failures: int, delay: float, error: Exception) -> None:
        if self._active is not None:
            self._retrying(self._active, failures, delay, error)

    def _retrying(self, record: UpdateRecord, failures: int, delay: float, error: Exception) -> None:
        """Say why the update waits: the reason reported for the model until the step moves on."""
        what = hub_failure(error, self.settings, self.identity.hub_url)
        if what is None:
            what = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        record.reason = f"{RETRYING}{what} (attempt {failures}; next in {delay:.0f} s)"
        self.notify("retrying", record, {"attempt": failures, "retry_in_s": round(delay, 1)})

    def _superseded_now(self) -> str | None:
        active = self._active
        return None if active is None else self.superseded(active)

    @property
    def downloader(self) -> Downloader:
        if self._downloader is None:
            from agent.download import Downloader

            self._downloader = Downloader(
                self.http,
                bandwidth_bps=self.settings.bandwidth_bps,
                retry=self.retry_policy(),
                sleep=self._sleep_unless_stopping,
                stopping=lambda: self.wait(0) or self._superseded_now() is not None,
                on_retry=self._artifact_retry,
            )
        return self._downloader

    def retry_policy(self) -> RetryPolicy:
        from agent.download import RetryPolicy

        s = self.settings
        return RetryPolicy(
            attempts=s.retry_attempts, base_s=s.retry_base_s, cap_s=s.retry_max_s, window_s=s.retry_window_s
        )

    def workdir(self, record: UpdateRecord) -> Path:
        return self.settings.data_dir / "downloads" / record.name / str(record.target_version)

    def tuf(self) -> TufClient:
        """A fresh TUF view (imported lazily: python-tuf costs ~10 MB the daemon needs only while updating)."""
        from agent.tufclient import TufClient

        root = self.identity.tuf_root.encode()
        return TufClient(self.settings.data_dir / "tuf", self.identity.hub_url, self.http, root)

    def _manifest(self, record: UpdateRecord) -> Manifest:
        path = self.workdir(record) / "manifest.json"
        try:
            return Manifest.from_json(path.read_bytes())
        except ValidationError as e:
            raise RefusedUpdate(f"invalid manifest: {e.errors()[0]['msg']}") from e

    def _check(self, record: UpdateRecord, manifest: Manifest) -> None:
        if manifest.profile != self.profile.name:
            raise ProfileMismatch(
                f"artifact built for profile {manifest.profile!r}, this device is {self.profile.name!r}"
            )
        if manifest.format not in self.profile.formats:
            raise ProfileMismatch(f"format {manifest.format.value} is not run by profile {self.profile.name}")
        runtime = runtime_for_format(manifest.format.value)
        if not runtime_installed(runtime):
            raise RuntimeMissing(
                f"{manifest.format.value} artifacts need {runtime}, which is not installed on this device: "
                f"{INSTALL_HINT[runtime]}"
            )
        if (manifest.name, manifest.version) != (record.name, record.target_version):
            raise RefusedUpdate(
                f"manifest is {manifest.name} v{manifest.version}, desired {record.name} v{record.target_version}"
            )
        active = self.store.slot_version(record.name, "active")
        if active is not None and manifest.version < active and not record.explicit_rollback:
            raise OlderVersion(f"v{manifest.version} is older than installed v{active} and not an explicit rollback")

    def _guard(
        self,
        record: UpdateRecord,
        action: Callable[[], Ev],
        refusal: Ev,
        error: Ev = Ev.ERROR,
        supersedable: bool = False,
    ) -> Ev:
        """Run a step: a refusal or an error becomes the step's event with the reason in the record.

        A request to the hub that fails once (metadata or manifest: refused, cut, timed out) is retried
        with full-jitter backoff until `retry_attempts` tries and `retry_window_s` have passed, so a
        flaky or briefly absent network does not fail the update; the artifact download retries on its
        own (Downloader, same policy). Anything unexpected is an error too, never an exception out of
        the lifecycle (that would leave the record mid-step).

        `supersedable` (download and verify: nothing is installed yet): a newer desired state that no longer
        wants this update ends the step, also mid-download or mid-retry, instead of finishing an update
        the hub has moved away from (e.g. an aborted rollout). Later steps always run to the end.
        """
        if not supersedable:
            return self._run_guarded(record, action, refusal, error)
        self._active = record
        try:
            return self._run_guarded(record, action, refusal, error)
        finally:
            self._active = None

    def _run_guarded(self, record: UpdateRecord, action: Callable[[], Ev], refusal: Ev, error: Ev) -> Ev:
        policy = self.retry_policy()
        failures, streak_started = 0, time.monotonic()
        while True:
            try:
                if (why := self._superseded_now()) is not None:
                    raise Superseded(why)
                event = action()
                if (record.reason or "").startswith(RETRYING):  # the wait is over (also one from before a restart)
                    record.reason = None
                return event
            except Unreachable as e:
                if failures == 0:
                    streak_started = time.monotonic()
                failures += 1
                if policy.exhausted(failures, time.monotonic() - streak_started):
                    record.reason = f"DownloadError: {e} (after {failures} attempts)"
                    return error
                delay = policy.delay(failures)
                log.warning("%s v%s: %s; retry %d in %.1f s", record.name, record.target_version, e, failures, delay)
                self._retrying(record, failures, delay, e)
                if self._pause(delay) and self._superseded_now() is None:
                    raise Interrupted("agent stopping while retrying") from e
            except Superseded as e:
                record.reason = f"Superseded: {e}"
                return error
            except Interrupted:
                if self.wait(0) or (why := self._superseded_now()) is None:
                    raise  # the agent stops: the step resumes at the next start
                record.reason = f"Superseded: {why}"
                return error
            except RefusedUpdate as e:
                record.reason = f"{type(e).__name__}: {e}"
                return refusal
            except (AgentError, OSError) as e:
                name = "DownloadError" if isinstance(e, DownloadError) else type(e).__name__
                record.reason = f"{name}: {e}"
                return error
            except Exception as e:  # a bug must not wedge the update mid-step; logged with its traceback
                log.exception("%s v%s: unexpected error", record.name, record.target_version)
                record.reason = f"unexpected {type(e).__name__}: {e}"
                return error

    def download(self, record: UpdateRecord) -> Ev:
        """Refresh signed metadata, fetch and check the manifest, then download the artifact (resuming)."""

        def act() -> Ev:
            assert record.manifest_target is not None
            work = self.workdir(record)
            tuf = self.tuf()
            tuf.fetch_small_target(record.manifest_target, work / "manifest.json")
            manifest = self._manifest(record)
            self._check(record, manifest)
            info = tuf.target_info(
                artifact_target(manifest.name, manifest.version, manifest.profile, manifest.artifact.file)
            )
            if (info.length, info.hashes.get("sha256")) != (manifest.artifact.size, manifest.artifact.sha256):
                raise DigestMismatch("the manifest's artifact size/sha256 differ from the signed metadata")
            part = work / f"{manifest.artifact.file}.part"
            if not part.exists() and (copy := self.local_copy(manifest)) is not None:
                shutil.copyfile(copy, part)  # the verify step checks it against the signed metadata, as any download
                self.notify("local_copy", record, {"local_copy": str(copy)})
                return Ev.DOWNLOADED
            if not part.exists() and self.settings.delta_updates and self._by_patch(record, tuf, info, part):
                return Ev.DOWNLOADED
            have = part.stat().st_size if part.exists() else 0
            self.notify(
                "download_resumed" if have else "download_started", record, {"offset": have, "length": info.length}
            )
            self.downloader.fetch(tuf.target_url(info), part, info.length)
            return Ev.DOWNLOADED

        return self._guard(record, act, Ev.REFUSED, supersedable=True)

    def _by_patch(self, record: UpdateRecord, tuf: TufClient, info: Any, part: Path) -> bool:
        """Rebuild the artifact into `part` from a held version and a signed patch (agent/delta.py), if the hub
        offers one; False: download it in full (no patch, or it failed: the reason goes with the event)."""
        from agent import delta

        assert record.target_version is not None
        details = delta.failed_patch(part)
        if details is None:
            offer = delta.find_offer(tuf, self.patch_base, record.name, record.target_version, str(info.path))
            if offer is None:
                return False

            def started(have: int, length: int, about: dict[str, Any]) -> None:
                kind = "download_resumed" if have else "download_started"
                self.notify(kind, record, {"offset": have, "length": length, "delta_from": about["from"]})

            details = delta.try_patch(tuf=tuf, downloader=self.downloader, offer=offer, info=info, part=part,
                                      started=started)  # fmt: skip
        self.notify("delta", record, {"delta": details})  # sent with the `downloaded` event
        return bool(details.get("ok")) and part.exists()

    def verify(self, record: UpdateRecord) -> Ev:
        """Check manifest and artifact against the signed length + sha256 (a fresh metadata refresh)."""

        def act() -> Ev:
            assert record.manifest_target is not None
            work = self.workdir(record)
            manifest = self._manifest(record)
            tuf = self.tuf()
            tuf.verify_file(tuf.target_info(record.manifest_target), work / "manifest.json")
            info = tuf.target_info(
                artifact_target(manifest.name, manifest.version, manifest.profile, manifest.artifact.file)
            )
            part, final = work / f"{manifest.artifact.file}.part", work / manifest.artifact.file
            candidate = part if part.exists() else final
            try:
                tuf.verify_file(info, candidate)
            except DigestMismatch:
                candidate.unlink(missing_ok=True)  # never resume from bytes that failed verification
                raise
            if candidate == part:
                part.replace(final)
            return Ev.VERIFIED

        return self._guard(record, act, Ev.REFUSED, supersedable=True)

    def stage(self, record: UpdateRecord) -> Ev:
        """Copy the verified files into a complete version directory (the staging slot)."""

        def act() -> Ev:
            assert record.target_version is not None
            if not self.store.installed(record.name, record.target_version):
                work = self.workdir(record)
                manifest = self._manifest(record)
                self.store.stage(manifest, (work / "manifest.json").read_bytes(), work / manifest.artifact.file)
            shutil.rmtree(self.workdir(record), ignore_errors=True)
            return Ev.STORED

        return self._guard(record, act, Ev.ERROR)

    @property
    def patch_base(self) -> ModelStore:
        """The store whose active and previous versions a signed patch may start from (a shadow's: the serving one)."""
        return self.store

    @property
    def slots(self) -> SlotStore:
        """The A/B store this update's unit lives in (models here; PipelineSteps: pipelines)."""
        return self.store

    def activate(self, record: UpdateRecord) -> Ev:
        """Swap the `active` symlink to the new version (the old one becomes `previous`): one rename, for a model
        or a whole pipeline stage set."""

        def act() -> Ev:
            assert record.target_version is not None
            self.slots.activate(record.name, record.target_version)
            return Ev.ACTIVATED

        return self._guard(record, act, Ev.ERROR)

    def self_test(self, record: UpdateRecord) -> Ev:
        """Load, golden cases, NaN/inf, latency budget; on success the new version starts serving."""
        assert record.target_version is not None
        try:
            manifest = self.store.manifest(record.name, record.target_version)
            artifact = self.store.artifact(record.name, record.target_version)
            model, result = run_self_test(manifest, artifact, self.profile, self.settings.latency_basis)
        except (SelfTestFailed, AgentError) as e:
            record.reason = f"self-test failed: {e}"
            return Ev.FAILED
        self.serving.install(record.name, record.target_version, model)
        self.notify("self_test_result", record, result.__dict__)
        return Ev.PASSED

    def probation(self, record: UpdateRecord) -> Ev:
        """Serve for `probation_s`; fail if serving errors appear or a golden case stops being finite."""
        assert record.target_version is not None
        served = self.serving.get(record.name)
        if served is None or served.version != record.target_version:  # restarted during probation
            event = self.self_test(record)
            served = self.serving.get(record.name)
            if event is not Ev.PASSED or served is None:
                return event
        errors_before = served.errors
        if self.wait(self.settings.probation_s):
            raise Interrupted("agent stopping during probation")
        manifest = self.store.manifest(record.name, record.target_version)
        try:
            outputs = served.model.predict(case_inputs(manifest.golden.cases[0]))
        except AgentError as e:
            record.reason = f"probation: inference failed: {e}"
            return Ev.FAILED
        if served.errors > errors_before or not all(np.isfinite(v).all() for v in outputs.values()):
            record.reason = f"probation: {served.errors - errors_before} inference errors or non-finite output"
            return Ev.FAILED
        self.store.collect_garbage(record.name)
        return Ev.PASSED

    def roll_back(self, record: UpdateRecord) -> Ev:
        """The only place a rollback happens: re-point `active`, serve that model again, drop the rest."""

        def act() -> Ev:
            self.store.roll_back(record.name, record.from_version)
            if record.from_version is None:
                self.serving.remove(record.name)
            else:
                served = self.serving.get(record.name)
                if served is None or served.version != record.from_version:
                    path = self.store.artifact(record.name, record.from_version)
                    manifest = self.store.manifest(record.name, record.from_version)
                    model = LoadedModel.from_file(path, threads=self.profile.threads, manifest=manifest)
                    self.serving.install(record.name, record.from_version, model)
            self.store.collect_garbage(record.name)
            return Ev.DONE

        return self._guard(record, act, Ev.ERROR)


def _ignore(kind: str, record: UpdateRecord, details: dict[str, Any]) -> None:
    """Default notifier: progress is not reported."""


def _never(_record: UpdateRecord) -> str | None:
    return None


def _nowhere(_manifest: Manifest) -> Path | None:
    return None


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False
