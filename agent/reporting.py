"""What the agent tells the hub: numbered events for lifecycle steps, and its reported state."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent import AGENT_VERSION
from agent.fsutil import atomic_write
from agent.lifecycle import Ev, Lifecycle
from agent.metrics import AgentMetrics
from agent.serving import ServingRegistry
from agent.store import ModelStore
from protocol.messages import Event, EventKind, ReportedModel, ReportedState
from protocol.messages import LifecycleState as State

log = logging.getLogger(__name__)

# Event reported when a record enters a state (None: nothing to report for that step).
ENTER_EVENTS: dict[State, EventKind | None] = {
    State.DOWNLOADING: None,  # download_started / download_resumed come from the step itself
    State.VERIFYING: EventKind.DOWNLOADED,
    State.STAGED: EventKind.VERIFIED,
    State.ACTIVATING: EventKind.STAGED,
    State.SELF_TEST: EventKind.ACTIVATED,
    State.PROBATION: EventKind.SELF_TEST_PASSED,
    State.COMMITTED: EventKind.COMMITTED,
    State.FAILED: EventKind.FAILED,
    State.ROLLING_BACK: EventKind.FAILED,
    State.ROLLED_BACK: EventKind.ROLLED_BACK,
}


def event_for_transition(before: State, event: Ev, after: State) -> EventKind | None:
    """The event kind a transition is reported as (refusals and self-test failures get their own)."""
    if after is State.FAILED and event is Ev.REFUSED:
        return EventKind.REFUSED
    if after is State.ROLLING_BACK:
        if event is Ev.ROLLBACK_REQUESTED:
            return None  # a manual rollback reports only its outcome
        return EventKind.SELF_TEST_FAILED if before is State.SELF_TEST else EventKind.FAILED
    return ENTER_EVENTS.get(after)


class EventLog:
    """Numbers events with a per-device sequence persisted on disk, so it grows across restarts."""

    def __init__(self, device_id: str, seq_path: Path, publish: Callable[[bytes], None], metrics: AgentMetrics) -> None:
        self.device_id = device_id
        self.seq_path = seq_path
        self.publish = publish
        self.metrics = metrics
        self._seq = int(seq_path.read_text()) if seq_path.exists() else 0
        self._lock = threading.Lock()

    def emit(self, kind: EventKind, **fields: Any) -> Event:
        """Publish one event (QoS 1) with the next sequence number."""
        with self._lock:
            self._seq += 1
            atomic_write(self.seq_path, str(self._seq).encode())
            event = Event(device_id=self.device_id, seq=self._seq, kind=kind, ts=datetime.now(UTC), **fields)
        self.metrics.events.labels(kind.value).inc()
        log.info("event %s %s", kind.value, event.reason or "")
        self.publish(event.to_bytes())
        return event


def reported_state(
    *,
    device_id: str,
    profile: str,
    applied_generation: int,
    store: ModelStore,
    lifecycle: Lifecycle,
    serving: ServingRegistry,
) -> ReportedState:
    """What runs now and where each update stands."""
    models = []
    for name in sorted(set(store.names()) | set(lifecycle.names())):
        record = lifecycle.load(name)
        served = serving.get(name)
        passed = {State.COMMITTED: True, State.PROBATION: True, State.ROLLED_BACK: False}.get(record.state)
        models.append(
            ReportedModel(
                name=name,
                active_version=store.slot_version(name, "active"),
                previous_version=store.slot_version(name, "previous"),
                target_version=record.target_version,
                state=record.state,
                reason=record.reason,
                serving_since=served.since if served else None,
                self_test_passed=passed,
            )
        )
    return ReportedState(
        device_id=device_id,
        profile=profile,
        applied_generation=applied_generation,
        models=models,
        agent_version=AGENT_VERSION,
        reported_at=datetime.now(UTC),
    )
