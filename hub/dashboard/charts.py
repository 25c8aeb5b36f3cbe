"""Time-series charts as server-rendered SVG geometry: lines or stacked bars over a time axis, rollout events marked.

The numbers come from `GET /api/v1/telemetry/{model}/{version}/trend` (hub/telemetry/trends.py); this module
only places them. Every point and bar keeps its exact value (`data-value`, and a tooltip), the time axis its
domain (`data-t0`, `data-t1`), every marker its audit time (`data-ts`), so a test can check the drawing against
the API.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hub.dashboard.views import parse_ts

FULL = (640.0, 150.0)
COMPACT = (340.0, 110.0)
LEFT, RIGHT, BOTTOM, LANE_H = 46.0, 10.0, 18.0, 11.0
MARK_CHAR_W = 5.6  # at the markers' 9px font
NICE = (1.0, 2.0, 2.5, 5.0, 10.0)
TIME_STEPS_S = (1, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800)

Format = Callable[[float], str]


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    value: float
    t: str  # the bucket's start (ISO, as the API gives it)
    title: str
    flagged: bool = False  # e.g. a bucket whose drift counts as dataset drift


@dataclass(frozen=True)
class Line:
    name: str
    css: str
    points: list[Point]
    paths: list[str]  # polyline point lists; a bucket without a value breaks the line


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    css: str
    value: float
    t: str
    title: str


@dataclass(frozen=True)
class Tick:
    pos: float
    text: str


@dataclass(frozen=True)
class Marker:
    x: float
    ts: str
    action: str
    text: str
    title: str
    lane: int | None  # row of its label above the plot; None: no room, tooltip only


@dataclass
class Chart:
    """One chart: a plot area [x0, x1] x [y0, y1] (SVG y grows downwards), its series and its axes."""

    key: str
    title: str
    width: float
    height: float
    x0: float
    x1: float
    y0: float
    y1: float
    t0: str
    t1: str
    lines: list[Line] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)  # (css class, name)
    empty: bool = True


@dataclass(frozen=True)
class Series:
    """One line: a name, a css class and, per API point, the value to draw (None: no data)."""

    name: str
    css: str
    points: Sequence[dict[str, Any]]
    value: Callable[[dict[str, Any]], float | None]
    flag: Callable[[dict[str, Any]], bool] = lambda _p: False


class TimeAxis:
    """Maps times in [t0, t1] to x in [x0, x1]."""

    def __init__(self, t0: datetime, t1: datetime, x0: float, x1: float) -> None:
        self.t0, self.t1 = t0, max(t1, t0 + timedelta(seconds=1))
        self.x0, self.x1 = x0, x1

    def x(self, t: datetime) -> float:
        span = (self.t1 - self.t0).total_seconds()
        return round(self.x0 + (self.x1 - self.x0) * (t - self.t0).total_seconds() / span, 2)

    def ticks(self, most: int = 6) -> list[Tick]:
        span = (self.t1 - self.t0).total_seconds()
        step = next((s for s in TIME_STEPS_S if span / s <= most), TIME_STEPS_S[-1])
        first = int(self.t0.timestamp()) // step * step + step
        fmt = "%H:%M:%S" if step < 60 else "%H:%M" if span <= 86400 else "%m-%d %H:%M"
        t = datetime.fromtimestamp(first, self.t0.tzinfo)
        out = []
        while t < self.t1:
            out.append(Tick(self.x(t), t.strftime(fmt)))
            t += timedelta(seconds=step)
        return out


def nice_max(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten at or above `value` (1 for nothing)."""
    if value <= 0:
        return 1.0
    scale = 10.0 ** _floor_log10(value)
    return next(n * scale for n in NICE if n * scale >= value * (1 - 1e-9))


def _floor_log10(v: float) -> int:
    k = 0
    while v >= 10:
        v, k = v / 10, k + 1
    while v < 1:
        v, k = v * 10, k - 1
    return k


def plain(v: float) -> str:
    """1234 -> 1234, 1.5 -> 1.5, 0.125 -> 0.125 (at most 3 significant decimals)."""
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def percent(v: float) -> str:
    return f"{100 * v:.3g} %"


def _frame(
    key: str, title: str, size: tuple[float, float], t0: datetime, t1: datetime, lanes: int
) -> tuple[Chart, TimeAxis]:
    width, height = size
    top = 6.0 + lanes * LANE_H
    chart = Chart(key=key, title=title, width=width, height=height + lanes * LANE_H, x0=LEFT, x1=width - RIGHT,
                  y0=top, y1=height + lanes * LANE_H - BOTTOM, t0=t0.isoformat(), t1=t1.isoformat())  # fmt: skip
    axis = TimeAxis(t0, t1, chart.x0, chart.x1)
    chart.x_ticks = axis.ticks(7 if width >= FULL[0] else 4)
    return chart, axis


def _y(chart: Chart, value: float, top: float) -> float:
    return round(chart.y1 - (chart.y1 - chart.y0) * value / top, 2)


def _y_ticks(chart: Chart, top: float, fmt: Format) -> None:
    chart.y_ticks = [Tick(_y(chart, v, top), fmt(v)) for v in (0.0, top / 2, top)]


def _mid(point: dict[str, Any], axis: TimeAxis) -> datetime:
    start, end = parse_ts(point["start"]), parse_ts(point["end"])
    assert start is not None and end is not None
    return min(start + (end - start) / 2, axis.t1)


def line_chart(key: str, title: str, series: Sequence[Series], *, t0: datetime, t1: datetime,
               events: Sequence[dict[str, Any]], fmt: Format = plain, size: tuple[float, float] = FULL,
               floor_top: float = 0.0, labels: bool = True) -> Chart:  # fmt: skip
    """Lines through the buckets' midpoints, a gap where a bucket has no value; events as vertical markers."""
    lanes = _lanes(events, t0, t1, size[0]) if labels else {}
    chart, axis = _frame(key, title, size, t0, t1, _rows(lanes))
    values = [v for s in series for p in s.points if (v := s.value(p)) is not None]
    top = nice_max(max([*values, floor_top], default=0.0))
    _y_ticks(chart, top, fmt)
    for s in series:
        points: list[Point] = []
        paths: list[str] = []
        run: list[str] = []
        for p in s.points:
            v = s.value(p)
            if v is None:
                paths += [" ".join(run)] if len(run) > 1 else []
                run = []
                continue
            x, y = axis.x(_mid(p, axis)), _y(chart, v, top)
            points.append(Point(x, y, v, p["start"], f"{s.name}: {fmt(v)} ({_span(p)})", s.flag(p)))
            run.append(f"{x},{y}")
        paths += [" ".join(run)] if len(run) > 1 else []
        chart.lines.append(Line(s.name, s.css, points, paths))
        chart.legend.append((s.css, s.name))
    chart.empty = not values
    chart.markers = _markers(events, axis, lanes)
    return chart


def stacked_chart(key: str, title: str, points: Sequence[dict[str, Any]], parts: Sequence[tuple[str, str, str]], *,
                  t0: datetime, t1: datetime, events: Sequence[dict[str, Any]],
                  size: tuple[float, float] = FULL, labels: bool = True) -> Chart:  # fmt: skip
    """One bar per bucket, its `parts` (API key, css class, name) stacked from the bottom."""
    lanes = _lanes(events, t0, t1, size[0]) if labels else {}
    chart, axis = _frame(key, title, size, t0, t1, _rows(lanes))
    top = nice_max(max((sum(p[k] for k, _c, _n in parts) for p in points), default=0))
    _y_ticks(chart, top, plain)
    for p in points:
        start, end = parse_ts(p["start"]), parse_ts(p["end"])
        assert start is not None and end is not None
        x_start, x_end = axis.x(max(start, axis.t0)), axis.x(min(end, axis.t1))
        x, w = x_start + 0.5, max(x_end - x_start - 1.0, 1.0)
        base = chart.y1
        for api_key, css, name in parts:
            value = p[api_key]
            if not value:
                continue
            h = round((chart.y1 - chart.y0) * value / top, 2)
            chart.bars.append(Bar(x, round(base - h, 2), round(w, 2), h, css, value, p["start"],
                                  f"{name}: {value} ({_span(p)})"))  # fmt: skip
            base -= h
    chart.legend = [(css, name) for _k, css, name in parts]
    chart.empty = not points
    chart.markers = _markers(events, axis, lanes)
    return chart


def _span(point: dict[str, Any]) -> str:
    start, end = parse_ts(point["start"]), parse_ts(point["end"])
    assert start is not None and end is not None
    fmt = "%H:%M:%S" if (end - start).total_seconds() < 3600 else "%m-%d %H:%M"
    return f"{start.strftime(fmt)}\u2013{end.strftime(fmt)} UTC"


def _short(event: dict[str, Any]) -> str:
    return f"{event['label']} v{event['version']}" if event["action"] == "rollout.create" else str(event["label"])


def _rows(lanes: dict[int, int | None]) -> int:
    return max((lane + 1 for lane in lanes.values() if lane is not None), default=0)


def _lanes(events: Sequence[dict[str, Any]], t0: datetime, t1: datetime, width: float) -> dict[int, int | None]:
    """A label row for each event's text (at most three rows); None where it fits in none."""
    axis = TimeAxis(t0, t1, LEFT, width - RIGHT)
    ends: list[float] = []
    lanes: dict[int, int | None] = {}
    for i, e in enumerate(events):
        ts = parse_ts(e["ts"])
        assert ts is not None
        x, w = axis.x(ts), MARK_CHAR_W * len(_short(e)) + 4
        lane = next((k for k, end in enumerate(ends) if end < x), None)
        if lane is None and len(ends) < 3:
            ends.append(0.0)
            lane = len(ends) - 1
        if lane is not None and x + w > width:
            lane = None  # the text would run off the right edge
        if lane is not None:
            ends[lane] = x + w
        lanes[i] = lane
    return lanes


def _markers(events: Sequence[dict[str, Any]], axis: TimeAxis, lanes: dict[int, int | None]) -> list[Marker]:
    out = []
    for i, e in enumerate(events):
        ts = parse_ts(e["ts"])
        assert ts is not None
        when = ts.strftime("%Y-%m-%d %H:%M:%S")
        reason = f" — {e['reason']}" if e.get("reason") else ""
        title = f"{e['rollout_id']} (v{e['version']}) {e['label']} by {e['actor']}, {when} UTC{reason}"
        out.append(Marker(axis.x(ts), e["ts"], e["action"], _short(e), title, lanes.get(i)))
    return out
