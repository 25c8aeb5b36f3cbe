"""The update lifecycle: one persisted state machine per model, driven by a transition table.

Each state does one thing (a method of `UpdateSteps`) and returns one event; the table decides the
next state. The new state is written to disk *before* its action runs, so after a kill -9 the next
start re-enters that state and its (idempotent) action finishes or undoes the step. A per-state
entry counter stops a step that keeps killing the agent, and a step counter stops runaway loops.
Rollback is entered only through the `ROLLING_BACK` state.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from agent.errors import Interrupted, LifecycleError
from agent.fsutil import atomic_write
from protocol.messages import LifecycleState as State

MAX_STEPS = 24
MAX_STATE_ENTRIES = 3  # a state entered this often without leaving it counts as failed
# Downloads resume where they stopped, so interrupting one (power, network) is progress, not a loop.
UNGUARDED = frozenset({State.DOWNLOADING})


class Ev(StrEnum):
    """What a step reports back."""

    UPDATE = "update"
    ROLLBACK_REQUESTED = "rollback_requested"
    DOWNLOADED = "downloaded"
    VERIFIED = "verified"
    REFUSED = "refused"
    STORED = "stored"
    ACTIVATED = "activated"
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    DONE = "done"


TERMINAL = frozenset({State.IDLE, State.COMMITTED, State.FAILED, State.ROLLED_BACK})

TRANSITIONS: dict[tuple[State, Ev], State] = {
    **{(s, Ev.UPDATE): State.DOWNLOADING for s in TERMINAL},
    **{(s, Ev.ROLLBACK_REQUESTED): State.ROLLING_BACK for s in TERMINAL},
    (State.DOWNLOADING, Ev.DOWNLOADED): State.VERIFYING,
    (State.DOWNLOADING, Ev.REFUSED): State.FAILED,
    (State.DOWNLOADING, Ev.ERROR): State.FAILED,
    (State.VERIFYING, Ev.VERIFIED): State.STAGED,
    (State.VERIFYING, Ev.REFUSED): State.FAILED,
    (State.VERIFYING, Ev.ERROR): State.FAILED,
    (State.STAGED, Ev.STORED): State.ACTIVATING,
    (State.STAGED, Ev.ERROR): State.FAILED,
    (State.ACTIVATING, Ev.ACTIVATED): State.SELF_TEST,
    (State.ACTIVATING, Ev.ERROR): State.ROLLING_BACK,
    (State.SELF_TEST, Ev.PASSED): State.PROBATION,
    (State.SELF_TEST, Ev.FAILED): State.ROLLING_BACK,
    (State.SELF_TEST, Ev.ERROR): State.ROLLING_BACK,
    (State.PROBATION, Ev.PASSED): State.COMMITTED,
    (State.PROBATION, Ev.FAILED): State.ROLLING_BACK,
    (State.PROBATION, Ev.ERROR): State.ROLLING_BACK,
    (State.ROLLING_BACK, Ev.DONE): State.ROLLED_BACK,
    (State.ROLLING_BACK, Ev.ERROR): State.FAILED,
}


class UpdateRecord(BaseModel):
    """The persisted lifecycle of one model: where it stands and what it is heading for."""

    model_config = ConfigDict(extra="forbid")
    name: str
    state: State = State.IDLE
    target_version: int | None = None
    manifest_target: str | None = None
    explicit_rollback: bool = False
    rollout_id: str | None = None
    from_version: int | None = None  # active when the update began: what a rollback returns to
    reason: str | None = None
    generation: int | None = None  # desired-state generation that asked for this update
    rejected_version: int | None = None  # refused or rolled away from: not retried in the same generation
    entries: dict[str, int] = Field(default_factory=dict)
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class UpdateSteps(Protocol):
    """The action of each non-terminal state; each returns one event and sets `record.reason` on failure."""

    def download(self, record: UpdateRecord) -> Ev: ...
    def verify(self, record: UpdateRecord) -> Ev: ...
    def stage(self, record: UpdateRecord) -> Ev: ...
    def activate(self, record: UpdateRecord) -> Ev: ...
    def self_test(self, record: UpdateRecord) -> Ev: ...
    def probation(self, record: UpdateRecord) -> Ev: ...
    def roll_back(self, record: UpdateRecord) -> Ev: ...


# Called on every move with the record in its new state, before that state is saved: what it stores (the
# daemon's event for the hub) is on disk first, so a kill between the two replays the step and tells the hub
# twice rather than leaving a state the hub is never told about.
Transition = Callable[[UpdateRecord, State, Ev, State], None]

# The UpdateSteps method each non-terminal state runs.
STEP_OF_STATE: dict[State, str] = {
    State.DOWNLOADING: "download",
    State.VERIFYING: "verify",
    State.STAGED: "stage",
    State.ACTIVATING: "activate",
    State.SELF_TEST: "self_test",
    State.PROBATION: "probation",
    State.ROLLING_BACK: "roll_back",
}


class Lifecycle:
    """Drives one model's record through the table, persisting it in `<state_dir>/<name>.json`."""

    def __init__(self, state_dir: Path, steps: UpdateSteps, on_transition: Transition | None = None,
                 on_saved: Callable[[UpdateRecord], None] | None = None) -> None:
        self.state_dir = state_dir
        self.steps = steps
        self.on_transition = on_transition
        self.on_saved = on_saved  # after a move is saved (the daemon reports its state)
        state_dir.mkdir(parents=True, exist_ok=True)

    def load(self, name: str) -> UpdateRecord:
        """The persisted record of `name` (an idle one if there is none)."""
        path = self.state_dir / f"{name}.json"
        if not path.exists():
            return UpdateRecord(name=name)
        return UpdateRecord.model_validate_json(path.read_bytes())

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.state_dir.glob("*.json"))

    def forget(self, name: str) -> None:
        """Drop the record of a model that is no longer installed."""
        (self.state_dir / f"{name}.json").unlink(missing_ok=True)

    def save(self, record: UpdateRecord) -> None:
        record.updated_at = datetime.now(UTC)
        atomic_write(self.state_dir / f"{record.name}.json", record.model_dump_json(indent=1).encode())

    def fire(self, record: UpdateRecord, event: Ev) -> UpdateRecord:
        """Apply one event to a terminal record (a new update or a rollback request) and run to rest."""
        self._move(record, event)
        return self.run(record)

    def run(self, record: UpdateRecord) -> UpdateRecord:
        """Run state actions until a terminal state; resumes an interrupted record where it stopped."""
        actions: dict[State, Callable[[UpdateRecord], Ev]] = {
            state: getattr(self.steps, step) for state, step in STEP_OF_STATE.items()
        }
        for _ in range(MAX_STEPS):
            if record.state in TERMINAL:
                return record
            entries = record.entries.get(record.state.value, 0) + 1
            record.entries[record.state.value] = entries
            self.save(record)  # persisted before the interruptible action
            if entries > MAX_STATE_ENTRIES and record.state not in UNGUARDED:
                record.reason = f"{record.state.value} started {entries - 1} times without finishing; giving up"
                event = Ev.ERROR
            else:
                try:
                    event = actions[record.state](record)
                except Interrupted:  # a clean stop is not a failed attempt: resume at the next start
                    record.entries[record.state.value] = entries - 1
                    self.save(record)
                    return record
            self._move(record, event)
        record.reason = f"more than {MAX_STEPS} steps without reaching a resting state"
        record.state = State.FAILED
        self.save(record)
        raise LifecycleError(record.reason)

    def _move(self, record: UpdateRecord, event: Ev) -> None:
        before = record.state
        after = TRANSITIONS.get((before, event))
        if after is None:
            raise LifecycleError(f"{record.name}: no transition from {before.value} on {event.value}")
        record.state = after
        if after in TERMINAL or before in TERMINAL:
            record.entries = {}
        if self.on_transition is not None:
            self.on_transition(record, before, event, after)  # before the save (see Transition)
        self.save(record)
        if self.on_saved is not None:
            self.on_saved(record)

