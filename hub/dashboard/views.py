"""Pure helpers that turn API JSON into what the templates draw: counts, bar segments, readable times."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hub.rollouts.machine import TRANSITIONS, DeviceState, RolloutEvent, RolloutState

OPERATOR_VERBS = (RolloutEvent.START, RolloutEvent.PAUSE, RolloutEvent.RESUME, RolloutEvent.ABORT,
                  RolloutEvent.ROLLBACK)  # fmt: skip
DESTRUCTIVE_VERBS = {RolloutEvent.ABORT.value, RolloutEvent.ROLLBACK.value}
DEVICE_STATE_ORDER = [s.value for s in DeviceState]


@dataclass(frozen=True)
class Segment:
    """One coloured piece of a stacked bar, in percent of the bar's width."""

    label: str
    count: int
    x: float
    width: float


def stacked(counts: dict[str, int], total: int, order: list[str] | None = None) -> list[Segment]:
    """Segments left to right in `order` (unknown labels last); empty labels are dropped."""
    keys = [k for k in (order or []) if counts.get(k)] + sorted(k for k in counts if k not in (order or []))
    segments, x = [], 0.0
    for key in keys:
        if counts[key] <= 0:
            continue
        width = 100.0 * counts[key] / total if total else 0.0
        segments.append(Segment(label=key, count=counts[key], x=round(x, 3), width=round(width, 3)))
        x += width
    return segments


def fleet_summary(devices: list[dict[str, Any]]) -> dict[str, int]:
    """Total, online and offline device counts."""
    online = sum(1 for d in devices if d["online"])
    return {"total": len(devices), "online": online, "offline": len(devices) - online}


def versions_by_profile(devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per profile: how many devices run each `model vN` (a device counts once per model it reports)."""
    per_profile: dict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    for d in devices:
        totals[d["profile"]] += 1
        running = {name: v for name, v in d["current_versions"].items() if v is not None}
        if not running:
            per_profile[d["profile"]]["no model"] += 1
        for name, version in sorted(running.items()):
            per_profile[d["profile"]][f"{name} v{version}"] += 1
    return [{"profile": p, "devices": totals[p], "versions": sorted(per_profile[p].items())} for p in sorted(totals)]


def allowed_verbs(state: str) -> list[str]:
    """Operator verbs the rollout state machine accepts from `state` (the buttons a page offers)."""
    try:
        current = RolloutState(state)
    except ValueError:
        return []
    return [v.value for v in OPERATOR_VERBS if (current, v) in TRANSITIONS]


def rollout_progress(rollout: dict[str, Any]) -> dict[str, Any]:
    """Totals over all waves: devices, counts per state, healthy share, released waves."""
    counts: Counter[str] = Counter()
    for wave in rollout["waves"]:
        counts.update(wave["counts"])
    total = sum(w["total"] for w in rollout["waves"])
    return {
        "total": total,
        "counts": dict(counts),
        "healthy": counts.get(DeviceState.HEALTHY.value, 0),
        "segments": stacked(dict(counts), total, DEVICE_STATE_ORDER),
        "released": sum(1 for w in rollout["waves"] if w["released"]),
    }


def parse_ts(value: str | None) -> datetime | None:
    """An API timestamp (ISO 8601) as an aware datetime."""
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def ago(value: str | None, now: datetime) -> str:
    """`12 s ago`, `5 min ago`, `3 h ago`, `2 d ago`; `never` when missing."""
    ts = parse_ts(value)
    if ts is None:
        return "never"
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=now.tzinfo)
    seconds = max(0, int((now - ts).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


def human_bytes(n: int) -> str:
    """1.2 MiB style sizes."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def model_versions(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Registry rows grouped per (model, version), newest version first, with their profiles."""
    grouped: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        grouped[(r["name"], r["version"])].append(r)
    return [
        {"name": name, "version": version, "profiles": sorted(items, key=lambda r: r["profile"])}
        for (name, version), items in sorted(grouped.items(), key=lambda kv: (kv[0][0], -kv[0][1]))
    ]
