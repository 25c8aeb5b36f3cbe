"""Which trend charts a page shows: a model version's (telemetry page) and a rollout's versions side by side.

Both read `GET /api/v1/telemetry/{model}/{version}/trend`: per time bucket the requests by source, error and
fallback rates, p95 latency, drift score and live accuracy, with the rollout events of the audit log.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from hub.dashboard.charts import COMPACT, Chart, Series, line_chart, percent, plain, stacked_chart
from hub.dashboard.views import parse_ts

SOURCES = (("device", "src-device", "device"), ("cloud", "src-cloud", "cloud"), ("failed", "src-failed", "failed"))
# (key, title, API field, format, lowest top of the y axis)
METRICS: list[tuple[str, str, str, Callable[[float], str], float]] = [
    ("p95", "p95 latency (ms)", "p95_ms", plain, 1.0),
    ("error-rate", "error rate", "error_rate", percent, 0.01),
    ("fallback-rate", "cloud fallback rate", "fallback_rate", percent, 0.01),
    ("drift", "drift score (max JS)", "drift_score", plain, 0.1),
    ("accuracy", "live accuracy", "accuracy", percent, 1.0),
]


def _axis(trend: dict[str, Any]) -> tuple[datetime, datetime]:
    t0, t1 = parse_ts(trend["since"]), parse_ts(trend["until"])
    assert t0 is not None and t1 is not None
    return t0, t1


def _field(name: str) -> Callable[[dict[str, Any]], float | None]:
    def value(point: dict[str, Any]) -> float | None:
        v = point.get(name)
        return None if v is None else float(v)

    return value


def version_charts(trend: dict[str, Any]) -> list[Chart]:
    """Requests stacked by source, then p95, error and fallback rates (one chart), drift score, live accuracy."""
    t0, t1 = _axis(trend)
    points, events = trend["points"], trend["events"]
    requests = stacked_chart("trend-requests", "requests by who answered", points, SOURCES, t0=t0, t1=t1,
                             events=events)  # fmt: skip
    rates = line_chart("trend-rates", "error and cloud fallback rate", [
        Series("errors", "ln-bad", points, _field("error_rate")),
        Series("cloud fallback", "ln-warn", points, _field("fallback_rate")),
    ], t0=t0, t1=t1, events=events, fmt=percent, floor_top=0.01, labels=False)  # fmt: skip
    p95 = line_chart("trend-p95", "p95 latency (ms)", [Series("p95", "ln-0", points, _field("p95_ms"))],
                     t0=t0, t1=t1, events=events, floor_top=1.0, labels=False)  # fmt: skip
    drift = line_chart("trend-drift", "drift score (max JS distance to the baseline; red: dataset drift)", [
        Series("drift score", "ln-0", points, _field("drift_score"), lambda p: bool(p.get("dataset_drift"))),
    ], t0=t0, t1=t1, events=events, floor_top=0.1, labels=False)  # fmt: skip
    accuracy = line_chart("trend-accuracy", "live accuracy (delayed labels)",
                          [Series("accuracy", "ln-ok", points, _field("accuracy"))], t0=t0, t1=t1, events=events,
                          fmt=percent, floor_top=1.0, labels=False)  # fmt: skip
    return [requests, p95, rates, drift, accuracy]


def rollout_charts(trends: list[tuple[str, dict[str, Any]]]) -> list[Chart]:
    """Small charts with one line per version (the rollout's first): requests, then each metric."""
    if not trends:
        return []
    t0, t1 = _axis(trends[0][1])
    events = trends[0][1]["events"]
    css = [f"ln-{i}" for i in range(len(trends))]
    charts = [line_chart("rollout-requests", "requests", [
        Series(name, css[i], t["points"], _field("requests")) for i, (name, t) in enumerate(trends)
    ], t0=t0, t1=t1, events=events, size=COMPACT)]  # fmt: skip
    for key, title, name, fmt, floor in METRICS:
        series = [Series(label, css[i], t["points"], _field(name)) for i, (label, t) in enumerate(trends)]
        charts.append(line_chart(f"rollout-{key}", title, series, t0=t0, t1=t1, events=events, fmt=fmt,
                                 size=COMPACT, floor_top=floor, labels=False))  # fmt: skip
    return charts
