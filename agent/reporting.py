"""What the agent tells the hub: numbered events for lifecycle steps, and its reported state."""

from __future__ import annotations

import json
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
from agent.store import ModelStore, SlotStore
from agent.telemetry.outbox import Outbox
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
    """Numbered lifecycle events, stored in an outbox until the hub acknowledges them.

    `emit` returns once the event is committed to `events.sqlite` (WAL, synchronous=FULL) together
    with its sequence number, so a kill -9 or power loss never loses an emitted event nor reuses a
    seq. The telemetry uplink thread sends pending events in seq order and deletes them when the hub
    acknowledges their seqs (`Ack(channel="events")`); the hub drops duplicates by (device, seq).
    Events have their own outbox file and cap, so a telemetry backlog never pushes them out; when
    the events cap itself is exceeded the oldest are dropped, counted (`dropped`) and show as seq gaps.
    `events.seq` mirrors the last seq for operators and for data dirs from before the outbox.
    """

    CHANNEL = "events"

    def __init__(
        self,
        device_id: str,
        data_dir: Path,
        metrics: AgentMetrics,
        *,
        max_bytes: int = 5 * 2**20,
        max_age_s: float = 7 * 86400,
    ) -> None:
        self.device_id = device_id
        self.seq_path = data_dir / "events.seq"
        self.metrics = metrics
        self.outbox = Outbox(data_dir / "events.sqlite", max_bytes=max_bytes, max_age_s=max_age_s, shared=True)
        legacy = int(self.seq_path.read_text() or 0) if self.seq_path.exists() else 0
        self._seq = max(legacy, self.outbox.meta("seq"))
        self._lock = threading.Lock()
        self.on_stored: Callable[[], None] = lambda: None  # wakes the sender

    @property
    def seq(self) -> int:
        return self._seq

    def emit(self, kind: EventKind, **fields: Any) -> Event:
        """Store one event with the next sequence number; the uplink sends it."""
        with self._lock:
            self._seq += 1
            event = Event(device_id=self.device_id, seq=self._seq, kind=kind, ts=datetime.now(UTC), **fields)
            self.outbox.put_many([(self.CHANNEL, event.to_json())], set_meta={"seq": self._seq})
            atomic_write(self.seq_path, str(self._seq).encode())
        self.metrics.events.labels(kind.value).inc()
        log.info("event %s %s", kind.value, event.reason or "")
        self.on_stored()
        return event

    def pending(self, after: int, limit: int) -> list[tuple[int, int, str]]:
        """(row id, seq, payload) of stored events with a row id above `after`, oldest first."""
        with self._lock:
            rows = self.outbox.pending(limit=limit, after=after)
        out = []
        for row in rows:
            try:
                seq = int(json.loads(row.payload)["seq"])
            except (ValueError, KeyError, TypeError):  # cannot happen for rows emit() wrote; never block the queue
                log.error("events outbox row %d is not an event, deleted", row.id)
                self.delete([row.id])
                continue
            out.append((row.id, seq, row.payload))
        return out

    def delete(self, row_ids: list[int]) -> int:
        """Forget acknowledged events."""
        with self._lock:
            return self.outbox.ack(row_ids)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {**self.outbox.stats(), "seq": self._seq}

    def close(self) -> None:
        with self._lock:
            self.outbox.close()


def reported_units(store: SlotStore, lifecycle: Lifecycle, serving: Any) -> list[ReportedModel]:
    """Where each installed or updating unit (model or pipeline) stands; `serving.get(name)` gives what serves."""
    units = []
    for name in sorted(set(store.names()) | set(lifecycle.names())):
        record = lifecycle.load(name)
        served = serving.get(name)
        passed = {State.COMMITTED: True, State.PROBATION: True, State.ROLLED_BACK: False}.get(record.state)
        units.append(
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
    return units


def reported_state(
    *,
    device_id: str,
    profile: str,
    applied_generation: int,
    store: ModelStore,
    lifecycle: Lifecycle,
    serving: ServingRegistry,
    pipelines: list[ReportedModel] | None = None,
) -> ReportedState:
    """What runs now and where each update stands."""
    return ReportedState(
        device_id=device_id,
        profile=profile,
        applied_generation=applied_generation,
        models=reported_units(store, lifecycle, serving),
        pipelines=pipelines or [],
        agent_version=AGENT_VERSION,
        reported_at=datetime.now(UTC),
    )
