"""Telemetry of one model version for a cohort: who answered, trends, drift per feature, latency, errors, accuracy.

Reads `GET /api/v1/telemetry/{model}/{version}` (merged summaries of every source, hub/api/routes/telemetry.py),
`.../trend` (per time bucket, with the rollout events) and `GET /api/v1/telemetry/alerts`; nothing here computes
statistics of its own, it only draws them and says what they leave out.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from hub.api.deps import HubDep
from hub.dashboard import views
from hub.dashboard.auth import Session
from hub.dashboard.client import Api, ApiFailure
from hub.dashboard.histograms import feature_histogram, histogram, latency_bins
from hub.dashboard.render import failure_page, page
from hub.dashboard.trend_charts import version_charts

router = APIRouter()
RANGES = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7)}  # else: all time
OPEN_FEATURES = 12  # histograms shown open; the others behind "show the other N features"


def features(drift: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every input feature (and the predicted classes) with its histogram: drifted first, then by JS distance."""
    if not drift:
        return []
    items = list(drift["features"]) + ([{**drift["classes"], "name": "predicted class"}] if drift["classes"] else [])
    items.sort(key=lambda f: (not f["drifted"], -f["js"], f["name"]))
    return [{**f, "hist": feature_histogram(f)} for f in items]


def left_out(s: dict[str, Any], version: int) -> list[str]:
    """What the merged numbers do not cover, and why, in plain words."""
    notes = []
    src = s["sources"]
    if src["no_model"]:
        notes.append(
            f"{src['no_model']} requests came while no version served on the device ({src['no_model_windows']} "
            f"windows): the cloud answered them (or failed), nothing ran on the device, so they have no inputs, "
            f"latency or labels. Drift, latency and live accuracy cover the other {s['n'] - src['no_model']} "
            f"requests, made on devices serving v{version}."
        )
    if src["device"] and (src["cloud"] or src["failed"]):
        notes.append(
            "Units differ by source: a device counts every input it answered (a batch of 4 counts 4), while a "
            "cloud answer or a failure counts once per call whatever its batch (devices do not report the batch "
            "size of those calls)."
        )
    if s["skipped"]:
        notes.append(
            f"{s['skipped']} windows are left out: their histogram bins differ from those of the newest window with "
            "histograms (the baseline was binned differently), so their counts cannot be added."
        )
    if s["truncated"]:
        notes.append(f"Only the newest {s['rows']} windows are merged (the API's limit); older ones are left out.")
    if s["labels"]:
        notes.append(f"Live accuracy counts the {s['labels']['n']} answers whose true label came back.")
    return notes


def trend_range(s: dict[str, Any], rollouts: list[dict[str, Any]], version: int, now: datetime,
                period: str | None) -> tuple[datetime, datetime]:  # fmt: skip
    """The trend's time axis: the chosen period up to now, or (all time) the version's telemetry and rollouts."""
    if period in RANGES:
        return now - RANGES[period], now
    stamps = [views.parse_ts(s.get("window_start")), views.parse_ts(s.get("window_end"))]
    for r in rollouts:
        if r["version"] == version:
            stamps += [views.parse_ts(r["created_at"]), views.parse_ts(r["updated_at"])]
    known = [t for t in stamps if t is not None]
    if not known:
        return now - RANGES["24h"], now
    since, until = min(known), min(max(known), now)
    pad = max((until - since) * 0.02, timedelta(seconds=5))
    return since - pad, min(until + pad, now)


@router.get("/telemetry/{model}/{version}", response_class=HTMLResponse)
async def telemetry(
    request: Request, model: str, version: int, api: Api, hub: HubDep, session: Session,
    profile: str | None = None, group: str | None = None, tag: str | None = None, period: str | None = None,
) -> Response:  # fmt: skip
    """One version's merged telemetry for the whole fleet, a profile, a group or a tag, over a time range."""
    profile, group, tag = profile or None, group or None, (tag or "").strip() or None
    now = hub.clock()
    since = (now - RANGES[period]).isoformat() if period in RANGES else None
    cohort = {"profile": profile, "group": group, "tag": tag}
    try:
        stats, alerts, devices, rollouts = await asyncio.gather(
            api.get(f"/api/v1/telemetry/{model}/{version}", **cohort, since=since),
            api.get("/api/v1/telemetry/alerts", model=model, version=version, limit=20),
            api.get("/api/v1/devices", limit=10000), api.get("/api/v1/rollouts"),
        )  # fmt: skip
        t0, t1 = trend_range(stats, [r for r in rollouts if r["model"] == model], version, now, period)
        trend = await api.get(f"/api/v1/telemetry/{model}/{version}/trend", **cohort, since=t0.isoformat(),
                              until=t1.isoformat())  # fmt: skip
    except ApiFailure as e:
        return failure_page(request, e, session)
    return page(request, "telemetry.html", {
        "model": model, "version": version, "s": stats, "alerts": alerts, "profile": profile, "group": group,
        "tag": tag, "period": period if period in RANGES else "all", "periods": ["all", *RANGES],
        "profiles": sorted({d["profile"] for d in devices}),
        "groups": sorted({d["group"] for d in devices if d["group"]}),
        "features": features(stats["drift"]), "open_features": OPEN_FEATURES,
        "latency": histogram(latency_bins(stats["latency_ms"]), with_baseline=False),
        "left_out": left_out(stats, version), "trend": trend, "charts": version_charts(trend),
        "trend_query": {"since": t0.isoformat(), "until": t1.isoformat()},
    }, session=session)  # fmt: skip
