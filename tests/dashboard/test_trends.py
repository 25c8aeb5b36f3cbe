"""Issue 22's telemetry pages in Chromium: every source counted and split, trend charts with rollout events, readable
histogram labels, drift-alert features, the rollout plan as tables. What the pages draw is checked against the API,
and the API against what the scenario uploaded (meter.WINDOWS), the hourly rollups and the audit log."""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import pytest
from playwright.sync_api import Locator, Page
from sqlalchemy import create_engine, select

from hub.telemetry.stats import quantile_ms
from hub.telemetry.tables import telemetry_hourly
from protocol.telemetry import TelemetrySummary
from tests.dashboard import meter, scenario
from tests.dashboard.conftest import screenshot
from tests.dashboard.meter import utc
from tests.hub.e2e import Fleet

pytestmark = [pytest.mark.integration, pytest.mark.slow]
METER = f"/api/v1/telemetry/{meter.NAME}/1"


def split(windows: Iterable[TelemetrySummary]) -> dict[str, Any]:
    """What the scenario sent, added up: requests by source, latency and labels (the ground truth)."""
    ws = list(windows)
    n, errors = sum(w.n for w in ws), sum(w.errors for w in ws)
    cloud = sum(sum(w.fallback.values()) - sum(w.fallback_errors.values()) for w in ws)
    latency = [sum(b) for b in zip(*(w.latency_buckets for w in ws), strict=True)]
    right = sum(w.confusion[i][i] for w in ws if w.confusion for i in range(len(w.confusion)))
    labelled = sum(sum(map(sum, w.confusion)) for w in ws if w.confusion)
    return {"requests": n, "device": n - errors - cloud, "cloud": cloud, "failed": errors,
            "p95_ms": quantile_ms(latency, 0.95), "accuracy": right / labelled if labelled else None}  # fmt: skip


def by_bucket(windows: Iterable[TelemetrySummary], step_s: int) -> dict[datetime, list[TelemetrySummary]]:
    out: dict[datetime, list[TelemetrySummary]] = defaultdict(list)
    for w in windows:
        seconds = int(w.window_start.timestamp()) // step_s * step_s
        out[datetime.fromtimestamp(seconds, w.window_start.tzinfo)].append(w)
    return out


def shown(locator: Locator) -> list[tuple[str, float]]:
    """(data-t, data-value) of the points or bars a locator finds."""
    return [(locator.nth(i).get_attribute("data-t") or "", float(locator.nth(i).get_attribute("data-value") or "nan"))
            for i in range(locator.count())]  # fmt: skip


def trend_of(page: Page, fleet: Fleet, path: str, section: str, **params: Any) -> dict[str, Any]:
    """The API's trend for the range the page asked for (the section's data-since, data-until)."""
    box = page.get_by_test_id(section)
    query = {"since": box.get_attribute("data-since"), "until": box.get_attribute("data-until"), **params}
    r = fleet.api("GET", f"{path}/trend", params=query)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_every_source_counts_split_by_who_answered(signed_in: Page, fleet: Fleet, base_url: str) -> None:
    page = signed_in
    page.goto(f"{base_url}/dashboard/telemetry/{meter.NAME}/1")
    s = fleet.api("GET", METER).json()
    sent = split(meter.WINDOWS)
    no_model = [w for w in meter.WINDOWS if not w.inputs]
    assert {k: s["sources"][k] for k in ("requests", "device", "cloud", "failed")} == {
        k: sent[k] for k in ("requests", "device", "cloud", "failed")}  # fmt: skip
    assert s["n"] == sent["requests"] and s["skipped"] == 0 and s["rows"] == len(meter.WINDOWS)
    assert (s["sources"]["no_model"], s["sources"]["no_model_windows"]) == (sum(w.n for w in no_model), len(no_model))
    assert s["latency_ms"]["p95"] == pytest.approx(sent["p95_ms"]) and s["labels"]["accuracy"] == sent["accuracy"]
    for testid, key in (("inferences", "requests"), ("answered-device", "device"), ("answered-cloud", "cloud"),
                        ("failed", "failed"), ("src-device", "device"), ("src-cloud", "cloud")):  # fmt: skip
        assert page.get_by_test_id(testid).inner_text() == str(s["sources"][key]), testid
    notes = page.get_by_test_id("left-out").inner_text()
    assert f"{s['sources']['no_model']} requests came while no version served on the device" in notes
    # the hourly rollups of the hours whose no-model window came first keep the device windows beside it (issue 22:
    # they once left them out, and the API had to read those hours from their raw windows)
    engine = create_engine(fleet.db_url)
    with engine.connect() as conn:
        h = telemetry_hourly.c
        rollups = conn.execute(select(h.hour, h.skipped, h.summary).where(h.model == meter.NAME)).all()
    engine.dispose()
    assert rollups and not any(r.skipped for r in rollups) and s["hours_from_windows"] == 0
    drift = {f["name"] for f in s["drift"]["features"]}
    assert drift == set(meter.EDGES) and page.locator(".feature").count() == len(drift) + 1  # + predicted class
    screenshot(page, "telemetry-meter-v1")


def test_trend_charts_match_the_api_the_rollups_and_what_was_sent(signed_in: Page, fleet: Fleet,
                                                                   base_url: str) -> None:  # fmt: skip
    page = signed_in
    page.goto(f"{base_url}/dashboard/telemetry/{meter.NAME}/1")  # all time: ten hours, from the hourly rollups
    t = trend_of(page, fleet, METER, "trends")
    assert t["source"] == "hourly" and t["step_s"] == 3600 and t["windows"] == len(meter.WINDOWS)
    sent = {k: split(ws) for k, ws in by_bucket(meter.WINDOWS, 3600).items()}
    points = {utc(p["start"]): p for p in t["points"]}
    assert set(points) == set(sent)
    for start, expected in sent.items():
        p = points[start]
        counts = ("requests", "device", "cloud", "failed")
        assert {k: p[k] for k in counts} == {k: expected[k] for k in counts}, start
        assert p["error_rate"] == pytest.approx(expected["failed"] / expected["requests"])
        for key in ("p95_ms", "accuracy"):
            assert p[key] == (None if expected[key] is None else pytest.approx(expected[key])), (start, key)
    # every hour equals its rollups: they leave nothing out
    engine = create_engine(fleet.db_url)
    with engine.connect() as conn:
        h = telemetry_hourly.c
        rollups = conn.execute(select(h.hour, h.skipped, h.summary).where(h.model == meter.NAME)).all()
    engine.dispose()
    hours: dict[datetime, list[Any]] = defaultdict(list)
    for r in rollups:
        hours[r.hour].append(r)
    for hour, rows in hours.items():
        assert points[hour]["requests"] == sum(r.summary["n"] for r in rows), hour
    # the charts draw the API's numbers
    for css, key in (("src-device", "device"), ("src-cloud", "cloud"), ("src-failed", "failed")):
        bars = shown(page.locator(f"[data-testid=trend-requests] rect.{css}"))
        assert bars == [(p["start"], float(p[key])) for p in t["points"] if p[key]], css
    for chart, series, key in (("trend-p95", "p95", "p95_ms"), ("trend-rates", "errors", "error_rate"),
                               ("trend-rates", "cloud fallback", "fallback_rate"),
                               ("trend-drift", "drift score", "drift_score"),
                               ("trend-accuracy", "accuracy", "accuracy")):  # fmt: skip
        drawn = shown(page.locator(f"[data-testid={chart}] g[data-series='{series}'] circle"))
        assert drawn == [(p["start"], float(p[key])) for p in t["points"] if p[key] is not None], chart  # exact
    flagged = page.locator("[data-testid=trend-drift] circle.flagged").count()
    assert flagged == sum(1 for p in t["points"] if p["dataset_drift"])

    page.select_option("select[name=period]", "1h")  # the last hour: from the device windows, by the minute
    page.click("form.cohort button")
    page.wait_for_url(lambda url: "period=1h" in url)
    recent = trend_of(page, fleet, METER, "trends")
    assert recent["source"] == "windows" and recent["step_s"] == 60
    start = utc(recent["since"])
    sent = {k: split(ws) for k, ws in by_bucket([w for w in meter.WINDOWS if w.window_start >= start], 60).items()}
    assert {utc(p["start"]): p["requests"] for p in recent["points"]} == {k: v["requests"] for k, v in sent.items()}
    bars = shown(page.locator("[data-testid=trend-requests] rect.src-device"))
    assert bars == [(p["start"], float(p["device"])) for p in recent["points"] if p["device"]]
    screenshot(page, "telemetry-meter-v1-last-hour")


def _audit_rollout_entries(fleet: Fleet, rollout_ids: set[str], t0: datetime, t1: datetime) -> list[dict[str, Any]]:
    entries = fleet.api("GET", "/api/v1/audit", params={"limit": 1000}).json()
    return sorted((e for e in entries if e["target"] in rollout_ids and e["action"].startswith("rollout.")
                   and t0 <= utc(e["ts"]) <= t1), key=lambda e: (utc(e["ts"]), e["id"]))  # fmt: skip


def _check_markers(page: Page, chart: str, entries: list[dict[str, Any]]) -> None:
    """The chart's markers are the audit entries, each at its time on the chart's time axis."""
    svg = page.locator(f"[data-testid={chart}] svg")
    t0, t1 = utc(svg.get_attribute("data-t0") or ""), utc(svg.get_attribute("data-t1") or "")
    x0, x1 = float(svg.get_attribute("data-x0") or "nan"), float(svg.get_attribute("data-x1") or "nan")
    markers = page.locator(f"[data-testid={chart}] g.marker")
    found = [(utc(markers.nth(i).get_attribute("data-ts") or ""), markers.nth(i).get_attribute("data-action"),
              float(markers.nth(i).locator("line").last.get_attribute("x1") or "nan"))
             for i in range(markers.count())]  # fmt: skip
    assert [(ts, action) for ts, action, _x in found] == [(utc(e["ts"]), e["action"]) for e in entries]
    for ts, _action, x in found:
        assert x == pytest.approx(x0 + (x1 - x0) * (ts - t0) / (t1 - t0), abs=0.01)


def test_rollout_events_are_marked_at_the_audit_logs_times(signed_in: Page, fleet: Fleet, base_url: str) -> None:
    page = signed_in
    page.goto(f"{base_url}/dashboard/telemetry/digits/1")
    t = trend_of(page, fleet, "/api/v1/telemetry/digits/1", "trends")
    svg = page.locator("[data-testid=trend-requests] svg")
    t0, t1 = utc(svg.get_attribute("data-t0") or ""), utc(svg.get_attribute("data-t1") or "")
    digits = {r["id"] for r in fleet.api("GET", "/api/v1/rollouts").json() if r["model"] == "digits"}
    entries = _audit_rollout_entries(fleet, digits, t0, t1)
    actions = {e["action"] for e in entries}
    assert {"rollout.create", "rollout.start", "rollout.all_waves_passed", "rollout.auto_rollback"} <= actions
    assert [(utc(e["ts"]), e["action"]) for e in t["events"]] == [(utc(e["ts"]), e["action"]) for e in entries]
    for chart in ("trend-requests", "trend-p95", "trend-drift"):
        _check_markers(page, chart, entries)
    rows = page.locator("[data-testid=trend-events] tbody tr")
    assert rows.count() == len(entries)

    # the rollout page: the version it ships and the one its devices ran before, over its devices only
    page.goto(f"{base_url}/dashboard/rollouts/{scenario.ROLLOUT_RUNNING}")
    params = {"rollout": scenario.ROLLOUT_RUNNING}
    new = trend_of(page, fleet, "/api/v1/telemetry/digits/2", "rollout-trends", **params)
    old = trend_of(page, fleet, "/api/v1/telemetry/digits/1", "rollout-trends", **params)
    assert sum(p["requests"] for p in new["points"]) == scenario.CANARY_V2[0]
    lab = [d for d in scenario.LAB if d in scenario.TELEMETRY]
    assert sum(p["requests"] for p in old["points"]) == sum(scenario.TELEMETRY[d][0] for d in lab)  # not gw-1's
    for name, trend in (("v2 (this rollout)", new), ("v1 (before)", old)):
        drawn = shown(page.locator(f"[data-testid=rollout-requests] g[data-series='{name}'] circle"))
        assert drawn == [(p["start"], float(p["requests"])) for p in trend["points"]], name
        p95 = shown(page.locator(f"[data-testid=rollout-p95] g[data-series='{name}'] circle"))
        assert p95 == [(p["start"], float(p["p95_ms"])) for p in trend["points"] if p["p95_ms"] is not None]
    svg = page.locator("[data-testid=rollout-requests] svg")
    t0, t1 = utc(svg.get_attribute("data-t0") or ""), utc(svg.get_attribute("data-t1") or "")
    entries = _audit_rollout_entries(fleet, {scenario.ROLLOUT_RUNNING}, t0, t1)
    assert entries[0]["action"] == "rollout.create"
    _check_markers(page, "rollout-requests", entries)
    screenshot(page, "rollout-r-lab-trends")


# Each label's box on screen, relative to its histogram, and where the bars begin.
LABEL_BOXES = """svg => {
  const s = svg.getBoundingClientRect();
  const bars = Math.min(...[...svg.querySelectorAll('rect')].map(r => r.getBoundingClientRect().left)) - s.left;
  return [...svg.querySelectorAll('text.lbl')].map(t => { const b = t.getBoundingClientRect();
    return {text: t.textContent, left: b.left - s.left, right: b.right - s.left, top: b.top - s.top,
            bottom: b.bottom - s.top, width: s.width, height: s.height, bars: bars}; });
}"""


def test_histogram_labels_are_rounded_whole_and_exact_in_their_tooltips(signed_in: Page, fleet: Fleet,
                                                                        base_url: str) -> None:  # fmt: skip
    page = signed_in
    page.goto(f"{base_url}/dashboard/telemetry/{meter.NAME}/1")
    drift = {f["name"]: f for f in fleet.api("GET", METER).json()["drift"]["features"]}
    for name, labels in meter.LABELS.items():
        card = page.locator(f".feature[data-feature='{name}']")
        boxes = card.locator("svg.hist").evaluate(LABEL_BOXES)
        assert [b["text"] for b in boxes] == labels and len(set(labels)) == len(labels)
        for b in boxes:  # inside the drawing, left of the bars: nothing cut, nothing covered
            assert b["left"] >= 0 and b["right"] <= b["bars"] and b["top"] >= 0 and b["bottom"] <= b["height"], b
        assert all(a["bottom"] <= b["top"] + 0.5 for a, b in itertools.pairwise(boxes))  # no overlap
        tips = card.locator("g.bin > title").all_text_contents()
        edges = drift[name]["edges"]
        assert all(f"{e!r}" in " ".join(tips) for e in edges), tips  # the exact edges
        # a row per group of bins with equal lower edges (zero-width bins join the next): shares add up
        groups: list[list[int]] = [[]]
        for i in range(len(edges) - 1):
            groups[-1].append(i)
            if edges[i] != edges[i + 1] or i == len(edges) - 2:
                groups.append([])
        counts, total = drift[name]["window_counts"], sum(drift[name]["window_counts"])
        shares = [float(v) for v in card.locator("rect.win").evaluate_all("rs => rs.map(r => r.dataset.share)")]
        assert shares == pytest.approx([sum(counts[i] for i in g) / total for g in groups if g], abs=1e-4)
    latency = page.get_by_test_id("latency-hist").evaluate(LABEL_BOXES)
    assert len({b["text"] for b in latency}) == len(latency) and all(b["right"] <= b["bars"] for b in latency)


def test_drift_alert_features_name_what_drifted(signed_in: Page, fleet: Fleet, base_url: str) -> None:
    page = signed_in
    page.reload()
    alerts = fleet.api("GET", "/api/v1/telemetry/alerts", params={"state": "open"}).json()
    by_classes = [a for a in alerts if a["model"] == meter.NAME]
    assert by_classes and all(not a["drifted_features"] and "predicted classes drifted" in a["reason"]
                              for a in by_classes)  # fmt: skip
    for a in alerts:
        cell = page.locator(f"[data-testid=alerts-table] tr[data-alert='{a['id']}'] [data-testid=alert-features]")
        expected = a["drifted_features"] + (["predicted class"] if "predicted classes drifted" in a["reason"] else [])
        assert cell.inner_text() == ", ".join(expected) != "", a
    page.goto(f"{base_url}/dashboard/telemetry/{meter.NAME}/1")
    cells = page.locator("[data-testid=alerts-table] [data-testid=alert-features]").all_inner_texts()
    assert cells and all(c == "predicted class" for c in cells)


def test_rollout_plan_is_a_table_of_target_settings_and_gate_limits(signed_in: Page, fleet: Fleet,
                                                                     base_url: str) -> None:  # fmt: skip
    page = signed_in
    for rollout_id in ("r-edge", scenario.ROLLOUT_RUNNING):
        spec = fleet.rollout(rollout_id)["spec"]
        page.goto(f"{base_url}/dashboard/rollouts/{rollout_id}")
        target = page.locator("[data-testid=target-table] tr")
        rows = [tuple(target.nth(i).locator("td").all_inner_texts()) for i in range(target.count())]
        assert rows == [(k, v) for k, v in spec["target"].items() if v and k == "group"]
        plan = page.get_by_test_id("plan-table")
        assert plan.locator("tr[data-key=gates] td").inner_text() == ", ".join(spec["gates"])
        assert plan.locator("tr[data-key=auto_rollback] td").inner_text() == ("yes" if spec["auto_rollback"] else "no")
        stages = ", ".join(f"{s:g} %" for s in spec["stages"])
        assert plan.locator("tr[data-key=stages] td").inner_text().startswith(stages)
        limits = page.locator("[data-testid=limits-table] tbody tr")
        assert sorted(limits.nth(i).get_attribute("data-limit") or "" for i in range(limits.count())) == sorted(
            spec["gate_limits"])  # fmt: skip
        for name, value in spec["gate_limits"].items():
            row = page.locator(f"[data-testid=limits-table] tr[data-limit='{name}']")
            changed = name in scenario.EDGE_LIMITS and rollout_id == "r-edge"
            assert ("changed" in (row.get_attribute("class") or "")) == changed, name
            cells = row.locator("td").all_inner_texts()
            assert (cells[1] == cells[2]) != changed, (name, value, cells)
    page.goto(f"{base_url}/dashboard/rollouts/r-edge")
    value = "[data-testid=limits-table] tr[data-limit={}] [data-testid=limit-value]"
    assert page.locator(value.format("latency_p95_max_ms")).inner_text() == "50 ms"
    assert page.locator(value.format("error_rate_increase")).inner_text() == "2 %"
    assert page.locator("[data-testid=plan-table] tr[data-key=timeouts] td").inner_text() == "1 h / 0 s"
    screenshot(page, "rollout-r-edge-plan")
