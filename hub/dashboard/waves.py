"""One wave vocabulary for every human-facing text: the dashboard, `edgefleet rollouts`, the demo and the docs.

Waves are counted from 0, as the API counts them (`current_wave`, each wave's and device's `wave`, the audit
log) and as the rollout engine's reasons say them ("wave 0: 2/2 failed, ..."); wave 0 is the canary when the
rollout has one. A module of its own, without the dashboard's imports, so the operator CLI stays quick to start.
"""

from __future__ import annotations

from typing import Any


def wave_label(wave: int, rollout: dict[str, Any]) -> str:
    """A wave under a "wave" heading, the canary named: `0 (canary)`, `1`, `2`."""
    canary = wave == 0 and bool((rollout.get("spec") or {}).get("canary_percent"))
    return f"{wave} (canary)" if canary else str(wave)


def wave_name(wave: int, rollout: dict[str, Any]) -> str:
    """A wave in running text: `wave 0 (canary)`, `wave 2`."""
    return f"wave {wave_label(wave, rollout)}"


def wave_position(rollout: dict[str, Any]) -> str:
    """Where a rollout is: `wave 1 of 0-2`; a rollout of one wave: `wave 0`."""
    current = wave_name(rollout["current_wave"], rollout)
    last = len(rollout.get("waves") or []) - 1
    return f"{current} of 0-{last}" if last > 0 else current
