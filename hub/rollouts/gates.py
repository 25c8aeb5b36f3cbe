"""Pluggable health gates: each looks at one device's reported model, events and telemetry; passes, fails or waits.

A gate is a small class with a `key`; GATES maps key -> class. `self_test` reads the agent's report;
`latency`, `error_rate`, `fallback_rate` and `drift` compare the device's telemetry of the new
version with the previous version on devices of the same profile (hub/telemetry/health.py), with
the limits in the rollout's `gate_limits`, and WAIT until `min_inferences` arrived.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, ClassVar, Protocol

from hub.telemetry.health import TelemetryLimits, TelemetryView, judge


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
    profile: str | None = None
    previous_version: int | None = None
    released_at: datetime | None = None
    limits: TelemetryLimits = field(default_factory=TelemetryLimits)
    telemetry: TelemetryView | None = None  # None: telemetry gates wait


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


class TelemetryGate:
    """Base of the telemetry gates: the device's new-version telemetry against the previous version's cohort."""

    key: ClassVar[str]

    def evaluate(self, data: GateInput) -> tuple[Verdict, str | None]:
        """WAIT below the minimum sample, FAIL with the numbers when a limit is exceeded, else PASS."""
        if data.telemetry is None:
            return Verdict.WAIT, f"{self.key}: no telemetry"
        new = data.telemetry.device(data.model, data.version, data.device_id, data.profile, data.released_at)
        old = data.telemetry.previous(data.model, data.previous_version, data.profile, data.limits)
        where = f"v{data.previous_version} on {data.profile}" if data.previous_version else "no previous version"
        if data.previous_version and old is None:
            where += " (no telemetry)"
        ok, reason = judge(self.key, new, old, data.limits, where)
        return (Verdict.WAIT if ok is None else Verdict.PASS if ok else Verdict.FAIL), reason


class LatencyGate(TelemetryGate):
    """p95 latency within `latency_p95_ratio` x the previous version's (and under `latency_p95_max_ms`)."""

    key: ClassVar[str] = "latency"


class ErrorRateGate(TelemetryGate):
    """Error rate at most `error_rate_increase` above the previous version's."""

    key: ClassVar[str] = "error_rate"


class FallbackRateGate(TelemetryGate):
    """Cloud-fallback rate at most `fallback_rate_increase` above the previous version's."""

    key: ClassVar[str] = "fallback_rate"


class DriftGate(TelemetryGate):
    """No dataset drift against the manifest baseline unless the previous version drifts as well."""

    key: ClassVar[str] = "drift"


GATES: dict[str, type[HealthGate]] = {
    g.key: g for g in (SelfTestGate, LatencyGate, ErrorRateGate, FallbackRateGate, DriftGate)
}
TELEMETRY_GATES = {LatencyGate.key, ErrorRateGate.key, FallbackRateGate.key, DriftGate.key}


def build_gates(keys: list[str]) -> list[HealthGate]:
    """Instantiate the gates a rollout names (validated against GATES at creation)."""
    return [GATES[k]() for k in keys]
