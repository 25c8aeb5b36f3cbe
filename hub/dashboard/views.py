"""Pure helpers that turn API JSON into what the templates draw: counts, bar segments, readable times, the
rollout plan's rows, what a drift alert says drifted. Wave names: waves.py."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hub.rollouts.machine import TRANSITIONS, DeviceState, RolloutEvent, RolloutState
from hub.telemetry.health import TelemetryLimits

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


# The alert store (hub/telemetry/alerts.py) keeps the names of drifted *input* features only and writes
# this into the reason when the predicted classes drifted: an alert raised by the classes alone had an
# empty FEATURES column (issue 22).
CLASS_DRIFT_NOTE = "predicted classes drifted"


def alert_features(alert: dict[str, Any]) -> list[str]:
    """What drifted in an alert: its input features, and `predicted class` when the classes did."""
    names = list(alert.get("drifted_features") or [])
    if CLASS_DRIFT_NOTE in (alert.get("reason") or ""):
        names.append("predicted class")
    return names


def duration(seconds: float | None) -> str:
    """90 s, 15 min, 1 h, 7 d (whole units only; otherwise seconds)."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} s"


def target_rows(target: dict[str, Any] | None) -> list[tuple[str, str]]:
    """A rollout target as (criterion, value) rows; every criterion must match (none: the whole fleet)."""
    target = target or {}
    rows = [("group", str(target["group"]))] if target.get("group") else []
    rows += [("profile", str(target["profile"]))] if target.get("profile") else []
    rows += [("tag", f"{k}={v}") for k, v in sorted((target.get("tags") or {}).items())]
    if target.get("devices") is not None:
        rows.append(("devices", ", ".join(target["devices"]) or "none"))
    return rows or [("devices", "the whole fleet")]


@dataclass(frozen=True)
class GateLimit:
    """One telemetry gate limit of a rollout: its value, the default, and which gates use it."""

    name: str
    value: str
    default: str
    changed: bool
    gates: tuple[str, ...]
    meaning: str
    active: bool  # one of its gates is enabled in this rollout


TELEMETRY_GATES = ("latency", "error_rate", "fallback_rate", "drift")
# field of hub.telemetry.health.TelemetryLimits -> (gates using it, meaning, how to show a value)
GATE_LIMITS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "min_inferences": (TELEMETRY_GATES, "inferences a device serves before a verdict", "count"),
    "latency_p95_ratio": (("latency",), "new p95 at most this times the previous version's p95 ...", "ratio"),
    "latency_p95_slack_ms": (("latency",), "... or at most this much above it", "ms"),
    "latency_p95_max_ms": (("latency",), "p95 never above this (also without a previous version)", "ms"),
    "error_rate_increase": (("error_rate",), "new error rate at most the previous version's plus this", "pct"),
    "fallback_rate_increase": (("fallback_rate",), "new fallback rate at most the previous version's plus this", "pct"),
    "drift_share": (("drift",), "share of drifted input features that counts as dataset drift", "pct"),
    "class_drift_p": (("drift",), "predicted classes drift below this chi-squared p-value (small samples)", "p"),
    "compare_window_s": (TELEMETRY_GATES, "how far back the previous version's telemetry is compared", "duration"),
}


def _limit_text(value: Any, kind: str) -> str:
    if value is None:
        return "none"
    if kind == "pct":
        return f"{100 * float(value):g} %"
    if kind == "ms":
        return f"{float(value):g} ms"
    if kind == "ratio":
        return f"{float(value):g}\u00d7"
    if kind == "duration":
        return duration(float(value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def gate_limit_rows(spec: dict[str, Any]) -> list[GateLimit]:
    """Every telemetry gate limit of a rollout spec (unknown keys shown as they are), defaults beside."""
    defaults = TelemetryLimits().model_dump()  # what a rollout without gate_limits gets
    given = spec.get("gate_limits") or {}
    enabled = set(spec.get("gates") or [])
    rows = []
    for name in [*GATE_LIMITS, *sorted(k for k in given if k not in GATE_LIMITS)]:
        gates, meaning, kind = GATE_LIMITS.get(name, ((), "", "raw"))
        value = given.get(name, defaults.get(name))
        rows.append(GateLimit(
            name=name, value=_limit_text(value, kind), default=_limit_text(defaults.get(name), kind),
            changed=name in defaults and value != defaults[name], gates=gates, meaning=meaning,
            active=bool(enabled & set(gates)),
        ))  # fmt: skip
    return rows
