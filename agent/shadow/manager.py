"""The shadows the desired state asks for (`DesiredState.shadows`): fetched, run, ended, reported as events.

Called by the daemon's reconcile worker (one thread; the fetch runs there, after the model updates of the same
desired state) and read by the serving path through `active`, a dict mutated in place and never replaced (a dict
get is atomic under the GIL: the serving path takes no lock to find a shadow).

What goes to the hub, through the events outbox: a `shadow` event per closed window (`details`: a ShadowSummary of
that window only; the hub adds them up), and one `shadow` event with `reason` and no details when the candidate
cannot be shadowed (download, verification or load failed), not tried again until a new desired generation.
A shadow that leaves the desired state (the hub activated the candidate, or gave up on it) is stopped, its open
window sent, its files deleted. A shadow never touches the serving model, its A/B store or its lifecycle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.errors import AgentError, Interrupted
from agent.lifecycle import UpdateRecord
from agent.metrics import AgentMetrics
from agent.settings import AgentSettings
from agent.shadow.fetch import ShadowState, ShadowSteps, fetch
from agent.shadow.runner import ShadowRunner
from agent.store import ModelStore
from firmware_profiles import FirmwareProfile
from protocol.http import EnrollResponse
from protocol.manifest import Manifest
from protocol.messages import DesiredState, EventKind
from protocol.shadow import DesiredShadow, ShadowSummary

log = logging.getLogger(__name__)


class ShadowManager:
    """Starts and ends one `ShadowRunner` per shadowed model name."""

    def __init__(
        self,
        settings: AgentSettings,
        profile: FirmwareProfile,
        identity: EnrollResponse,
        *,
        serving_store: ModelStore,
        metrics: AgentMetrics,
        emit: Callable[..., Any],
        wait: Callable[[float], bool],
        latest: Callable[[], DesiredState | None],
    ) -> None:
        """`emit(kind, **fields)` stores an event (Agent.emit); `wait(seconds)` says True when the agent stops;
        `latest()` is the newest desired state received (a download it no longer asks for ends at once)."""
        self.settings = settings
        self.metrics = metrics
        self._emit = emit
        self._latest = latest
        self.steps = ShadowSteps(settings, profile, identity, serving_store=serving_store, wait=wait,
                                 superseded=self._superseded)  # fmt: skip
        self.steps.store.clean_leftovers()
        self.active: dict[str, ShadowRunner] = {}
        # name -> (version, generation, reason): not tried again until the hub publishes a new generation.
        self._refused: dict[str, tuple[int, int, str]] = {}
        self._fetching: dict[str, dict[str, Any]] = {}  # name -> its status while it is fetched

    # ---- the reconcile worker's side ------------------------------------------------------------
    def reconcile(self, wants: list[DesiredShadow], generation: int) -> None:
        """End the shadows no longer wanted (or wanted at another version), start the new ones."""
        wanted = {w.name: w for w in wants}
        for name, runner in list(self.active.items()):
            want = wanted.get(name)
            if want is None or want.version != runner.version:
                self.end(name, f"not in desired state generation {generation}" if want is None
                         else f"desired state generation {generation} shadows v{want.version}")  # fmt: skip
            else:
                runner.fraction, runner.rollout_id = want.fraction, want.rollout_id
        self._refused = {n: r for n, r in self._refused.items() if n in wanted and r[0] == wanted[n].version}
        for name in self.steps.names() - set(wanted):
            self.steps.discard(name)  # left by a shadow that ended while the agent was down
        for want in wants:
            refused = self._refused.get(want.name)
            if want.name not in self.active and (refused is None or refused[:2] != (want.version, generation)):
                self._begin(want, generation)

    def _begin(self, want: DesiredShadow, generation: int) -> None:
        record = UpdateRecord(name=want.name, target_version=want.version, manifest_target=want.manifest_target,
                              rollout_id=want.rollout_id, generation=generation)  # fmt: skip
        self.steps.discard(want.name, keep=want.version)
        status: dict[str, Any] = {"version": want.version, "rollout_id": want.rollout_id}
        self._fetching[want.name] = status
        try:
            state = fetch(self.steps, record, lambda s: status.update(state=s.value))
        except Interrupted:
            return  # the agent stops: the retained desired state starts it again, the download resumes
        finally:
            self._fetching.pop(want.name, None)
        if state is ShadowState.RUNNING:
            model, manifest = self.steps.loaded.pop(want.name)

            def window_closed(summary: ShadowSummary) -> None:  # the runner's worker, or the thread stopping it
                self._emit(EventKind.SHADOW, model=summary.model, version=summary.version,
                           rollout_id=runner.rollout_id, details=summary.model_dump(mode="json"))  # fmt: skip

            runner = ShadowRunner(model, manifest, fraction=want.fraction, settings=self.settings.shadow,
                                  emit=window_closed, metrics=self.metrics, rollout_id=want.rollout_id)  # fmt: skip
            self.active[want.name] = runner.start()
            log.info("shadow %s v%s: running on %.0f%% of requests", want.name, want.version, want.fraction * 100)
            return
        reason = record.reason or "unknown failure"
        if reason.startswith("Superseded"):  # the hub moved on while it downloaded: nothing to report
            log.info("shadow %s v%s: %s", want.name, want.version, reason)
            return
        self._refused[want.name] = (want.version, generation, reason)
        log.warning("cannot shadow %s v%s: %s", want.name, want.version, reason)
        self._emit(EventKind.SHADOW, model=want.name, version=want.version, rollout_id=want.rollout_id, reason=reason)

    def end(self, name: str, reason: str) -> None:
        """Stop the shadow of `name`, send its open window, delete its candidate's files."""
        runner = self.active.pop(name, None)  # first: the serving path stops offering to it
        if runner is not None:
            runner.stop()
            t = runner.totals
            log.info("shadow %s v%s ended (%s): %d rows compared, %d agreed, %d failed, %d requests dropped",
                     name, runner.version, reason, t["samples"], t["agreed"], t["failed"], t["dropped"])  # fmt: skip
        self.steps.discard(name)

    def stop(self) -> None:
        """The agent stops: every shadow's open window is sent; the candidates stay on disk for the next start."""
        for name, runner in list(self.active.items()):
            self.active.pop(name, None)
            runner.stop()
            self.steps.stopped_cleanly(name)
        self.steps.close()

    def _superseded(self, record: UpdateRecord) -> str | None:
        """Why the newest desired state no longer wants the candidate being fetched (None while it does)."""
        latest = self._latest()
        if latest is None or record.generation is None or latest.generation <= record.generation:
            return None
        if any((s.name, s.version) == (record.name, record.target_version) for s in latest.shadows):
            return None
        return f"desired generation {latest.generation} no longer shadows {record.name} v{record.target_version}"

    def verified_copy(self, manifest: Manifest) -> Path | None:
        """The candidate's artifact when the update activating it is for the very same file (it is verified again
        against the signed metadata as a download would be): the device need not fetch it twice."""
        store = self.steps.store
        if not store.installed(manifest.name, manifest.version):
            return None
        try:
            held = store.manifest(manifest.name, manifest.version)
            path = store.artifact(manifest.name, manifest.version)
            same = (held.artifact.sha256, held.artifact.size) == (manifest.artifact.sha256, manifest.artifact.size)
            return path if same and path.stat().st_size == manifest.artifact.size else None
        except (AgentError, OSError):
            return None

    # ---- views ------------------------------------------------------------------------------------
    def view(self) -> dict[str, dict[str, Any]]:
        """Each shadow by model name: its candidate version, state and counts so far (for /healthz)."""
        out: dict[str, dict[str, Any]] = {}
        for name, (version, generation, reason) in dict(self._refused).items():
            out[name] = {"version": version, "state": ShadowState.FAILED.value, "generation": generation,
                         "reason": reason}  # fmt: skip
        for name, status in dict(self._fetching).items():
            out[name] = dict(status)
        for name, runner in dict(self.active).items():
            out[name] = runner.status()
        return out
