"""The shadow phase of a rollout wave: gather the wave's shadow evidence, judge it, record the verdict.

A rollout created with `shadow` (hub.schemas.ShadowSpec) gives each wave's devices the candidate as a
`DesiredShadow` before it activates anywhere in that wave (hub/rollouts/members.py). Devices send
`shadow` events whose details are `ShadowSummary` windows; the wave's evidence is their sum over the
wave's members (events are stored once per device and seq, so the sum is exact). The verdict of each wave
is kept in the rollout's spec under `shadow_waves` ({wave: {started_at, verdict, reason}}): `collecting`
until decided, then `passed` (the wave activates), `failed` (the rollout pauses or rolls back), or
`accepted` (an operator resumed after a failure: the wave activates on the operator's word).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Connection, select

from hub.db.schema import events
from hub.schemas import ShadowEvidence, ShadowSpec
from protocol.shadow import ShadowSummary, merge_shadow

log = logging.getLogger(__name__)
ACTIVATES = ("passed", "accepted")  # verdicts that let a wave's devices activate the candidate


@dataclass
class Evidence:
    """One wave's pooled shadow summary and the devices that could not shadow the candidate."""

    summary: ShadowSummary | None = None
    devices: set[str] = field(default_factory=set)  # devices that sent at least one window
    refused: dict[str, str] = field(default_factory=dict)  # device -> reason


def spec_of(row: dict[str, Any]) -> ShadowSpec | None:
    """The rollout's shadow settings, or None when it has no shadow phase."""
    raw = row["spec"].get("shadow")
    return ShadowSpec.model_validate(raw) if raw else None


def wave_record(row: dict[str, Any], wave: int) -> dict[str, Any] | None:
    return dict(row["spec"].get("shadow_waves", {}).get(str(wave)) or {}) or None


def activates(row: dict[str, Any], wave: int) -> bool:
    """Whether members of `wave` may activate the candidate: no shadow phase, or the wave's shadow let them."""
    if not row["spec"].get("shadow"):  # the settings themselves are not needed here: no parse
        return True
    record = wave_record(row, wave)
    return record is not None and record.get("verdict") in ACTIVATES


def set_wave_record(row: dict[str, Any], wave: int, **values: Any) -> dict[str, Any]:
    """The rollout's spec with the wave's shadow record updated (the caller stores it); `row` is updated too."""
    waves = dict(row["spec"].get("shadow_waves", {}))
    waves[str(wave)] = {**(waves.get(str(wave)) or {}), **values}
    spec: dict[str, Any] = {**row["spec"], "shadow_waves": waves}
    row["spec"] = spec
    return spec


def evidence(conn: Connection, row: dict[str, Any], device_ids: list[str]) -> Evidence:
    """Sum of the shadow windows the devices sent for this rollout's candidate."""
    found = Evidence()
    if not device_ids:
        return found
    q = select(events.c.device_id, events.c.payload).where(
        events.c.kind == "shadow",
        events.c.rollout_id == row["id"],
        events.c.version == row["version"],
        events.c.device_id.in_(device_ids),
    )
    windows: list[ShadowSummary] = []
    for r in conn.execute(q):
        payload = r.payload or {}
        details = payload.get("details") or {}
        if not details:
            found.refused[r.device_id] = str(payload.get("reason") or "could not shadow the candidate")
            continue
        try:
            window = ShadowSummary.model_validate(details)
        except ValidationError as e:  # the bridge stores events whole: a bad window is left out, said once a tick
            log.warning("rollout %s: shadow window of %s left out: %s", row["id"], r.device_id, e.errors()[0]["msg"])
            continue
        if window.model != row["model"] or window.version != row["version"]:
            continue
        windows.append(window)
        found.devices.add(r.device_id)
    found.summary = merge_shadow(windows)
    return found


def judge(spec: ShadowSpec, found: Evidence, wave_size: int, started_at: datetime, now: datetime) -> tuple[str, str]:
    """("passed" | "failed" | "collecting", reason with the numbers)."""
    s = found.summary
    rows = (s.samples + s.failed) if s else 0
    if s is not None and rows >= spec.min_samples:
        said = _numbers(s)
        disagreement, ratio, limit = s.disagreement or 0.0, s.latency_ratio, spec.max_disagreement
        if disagreement > limit:
            return "failed", f"shadow: disagreement {disagreement:.1%} over the {limit:.1%} limit ({said})"
        if ratio is not None and ratio > spec.max_latency_ratio:
            return "failed", f"shadow: latency {ratio:.2f}x over the {spec.max_latency_ratio:g}x limit ({said})"
        return "passed", f"shadow: {said}"
    if wave_size and len(found.refused) >= wave_size:
        device, why = sorted(found.refused.items())[0]
        return "failed", f"shadow: no device of the wave could run the candidate (e.g. {device}: {why})"
    waited = (now - started_at).total_seconds()
    if waited >= spec.max_duration_s:
        reason = f"shadow: {rows} of the {spec.min_samples} rows needed within {spec.max_duration_s:g}s"
        if found.refused:
            device, why = sorted(found.refused.items())[0]
            reason += f"; {len(found.refused)} device(s) could not shadow the candidate (e.g. {device}: {why})"
        return "failed", reason
    return "collecting", f"shadow: {rows}/{spec.min_samples} rows from {len(found.devices)} device(s)"


def _numbers(s: ShadowSummary) -> str:
    parts = [f"{s.samples + s.failed} rows", f"disagreement {s.disagreement or 0.0:.1%}"]
    if s.latency_ratio is not None:
        parts.append(f"latency {s.latency_ratio:.2f}x")
    if s.failed:
        parts.append(f"{s.failed} candidate errors")
    if s.dropped:
        parts.append(f"{s.dropped} dropped")
    return ", ".join(parts)


def view(conn: Connection, row: dict[str, Any], wave: int, device_ids: list[str]) -> ShadowEvidence | None:
    """The wave's evidence and verdict for the API and dashboard; None when the wave had no shadow phase yet."""
    record = wave_record(row, wave)
    if spec_of(row) is None or record is None:
        return None
    found = evidence(conn, row, device_ids)
    s = found.summary
    return ShadowEvidence(
        samples=s.samples if s else 0,
        agreed=s.agreed if s else 0,
        failed=s.failed if s else 0,
        dropped=s.dropped if s else 0,
        disagreement=s.disagreement if s else None,
        latency_ratio=s.latency_ratio if s else None,
        mean_abs_error=s.mean_abs_error if s else None,
        devices=len(found.devices),
        refused=found.refused,
        verdict=record.get("verdict", "collecting"),
        reason=record.get("reason"),
        started_at=record.get("started_at"),
    )
