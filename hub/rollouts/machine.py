"""The rollout lifecycle as one transition table (Mender style): states, events, nothing else."""

from __future__ import annotations

from enum import StrEnum

from hub.errors import InvalidTransition

MAX_TRANSITIONS = 1000  # breaks a runaway loop: a rollout never legitimately changes state this often


class RolloutState(StrEnum):
    """Where a whole rollout stands."""

    SCHEDULED = "scheduled"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"


class RolloutEvent(StrEnum):
    """What can happen to a rollout: operator verbs and engine findings."""

    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    ROLLBACK = "rollback"
    ERROR_THRESHOLD = "error_threshold"  # too many failures in a wave and no auto-rollback
    AUTO_ROLLBACK = "auto_rollback"  # too many failures and the rollout asked for automatic rollback
    ALL_WAVES_PASSED = "all_waves_passed"


S, E = RolloutState, RolloutEvent
TRANSITIONS: dict[tuple[RolloutState, RolloutEvent], RolloutState] = {
    (S.SCHEDULED, E.START): S.RUNNING,
    (S.SCHEDULED, E.ABORT): S.ABORTED,
    (S.RUNNING, E.PAUSE): S.PAUSED,
    (S.RUNNING, E.ERROR_THRESHOLD): S.PAUSED,
    (S.RUNNING, E.AUTO_ROLLBACK): S.ROLLED_BACK,
    (S.RUNNING, E.ALL_WAVES_PASSED): S.COMPLETED,
    (S.RUNNING, E.ABORT): S.ABORTED,
    (S.RUNNING, E.ROLLBACK): S.ROLLED_BACK,
    (S.PAUSED, E.RESUME): S.RUNNING,
    (S.PAUSED, E.ABORT): S.ABORTED,
    (S.PAUSED, E.ROLLBACK): S.ROLLED_BACK,
    (S.COMPLETED, E.ROLLBACK): S.ROLLED_BACK,
    (S.ABORTED, E.ROLLBACK): S.ROLLED_BACK,
}
ROLLBACK_EVENTS = {E.ROLLBACK, E.AUTO_ROLLBACK}
LIVE_STATES = {S.RUNNING, S.PAUSED, S.COMPLETED}  # late or offline devices still converge to these


def next_state(state: RolloutState, event: RolloutEvent) -> RolloutState:
    """The state after `event`, or InvalidTransition naming both."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(f"cannot {event.value} a rollout that is {state.value}") from None


class DeviceState(StrEnum):
    """One device's progress inside a rollout (derived from its reported state and events)."""

    PENDING = "pending"  # not released yet, or released and not heard from
    SHADOWING = "shadowing"  # running the candidate beside its serving version (the wave's shadow phase)
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    ACTIVATING = "activating"
    PROBATION = "probation"  # serving the new version; healthy once the probation window passes
    HEALTHY = "healthy"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


TERMINAL_DEVICE_STATES = {DeviceState.HEALTHY, DeviceState.FAILED, DeviceState.ROLLED_BACK}
