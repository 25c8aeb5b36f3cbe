"""Pluggable health gates: each looks at one device's reported model and events and passes, fails or waits.

A gate is a small class with a `key`; GATES maps key -> class. Telemetry gates (p95 latency, error
rate, drift, fallback rate) plug in here when the telemetry issue lands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Protocol


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    WAIT = "wait"


@dataclass(frozen=True)
class GateInput:
    """What a gate may look at for one device in one rollout."""

    device_id: str
    model: str
    version: int
    reported_model: dict[str, Any] | None
    failure_events: dict[str, str] = field(default_factory=dict)  # kind -> reason


class HealthGate(Protocol):
    key: ClassVar[str]

    def evaluate(self, data: GateInput) -> tuple[Verdict, str | None]:
        """PASS, FAIL with a reason, or WAIT for more data."""
        ...


class SelfTestGate:
    """The agent's self-test on the golden cases must have passed for the new version."""

    key: ClassVar[str] = "self_test"

    def evaluate(self, data: GateInput) -> tuple[Verdict, str | None]:
        """FAIL on a failed self-test event or report, PASS on a passed one, else WAIT."""
        if "self_test_failed" in data.failure_events:
            return Verdict.FAIL, data.failure_events["self_test_failed"] or "self-test failed"
        passed = (data.reported_model or {}).get("self_test_passed")
        if passed is False:
            return Verdict.FAIL, (data.reported_model or {}).get("reason") or "self-test failed"
        return (Verdict.PASS, None) if passed else (Verdict.WAIT, None)


GATES: dict[str, type[HealthGate]] = {SelfTestGate.key: SelfTestGate}


def build_gates(keys: list[str]) -> list[HealthGate]:
    """Instantiate the gates a rollout names (validated against GATES at creation)."""
    return [GATES[k]() for k in keys]
