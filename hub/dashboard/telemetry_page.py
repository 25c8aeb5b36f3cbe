"""Telemetry of one model version for a cohort: drift per feature with histograms, latency, errors, accuracy.

Reads `GET /api/v1/telemetry/{model}/{version}` (merged summaries, hub/api/routes/telemetry.py) and
`GET /api/v1/telemetry/alerts`; nothing here computes statistics of its own, it only draws them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from hub.api.deps import HubDep
from hub.dashboard.auth import Session
from hub.dashboard.client import Api, ApiFailure
from hub.dashboard.render import failure_page, page

router = APIRouter()
CHART_W, CHART_H = 300.0, 100.0
RANGES = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7)}  # else: all time


@dataclass(frozen=True)
class HistogramBar:
    """One bin: the baseline's and the window's share of samples, as SVG rectangles side by side."""

    label: str
    x: float
    width: float
    baseline_h: float
    window_h: float
    baseline_share: float
    window_share: float


def histogram(baseline: list[int], window: list[int], labels: list[str]) -> list[HistogramBar]:
    """Both histograms normalised to shares, scaled so the tallest bar fills the chart."""
    b_total, w_total = sum(baseline) or 1, sum(window) or 1
    b_share = [c / b_total for c in baseline]
    w_share = [c / w_total for c in window] + [0.0] * (len(baseline) - len(window))
    top = max([*b_share, *w_share, 1e-9])
    slot = CHART_W / max(len(baseline), 1)
    return [
        HistogramBar(label=labels[i] if i < len(labels) else str(i), x=round(i * slot, 2), width=round(slot / 2 - 1, 2),
                     baseline_h=round(CHART_H * b_share[i] / top, 2), window_h=round(CHART_H * w_share[i] / top, 2),
                     baseline_share=b_share[i], window_share=w_share[i])
        for i in range(len(baseline))
    ]  # fmt: skip


def bin_labels(edges: list[float] | None, bins: int) -> list[str]:
    """`[0, 0.5)` style labels from bin edges; class indices when there are no edges."""
    if not edges:
        return [f"class {i}" for i in range(bins)]
    return [f"[{edges[i]:g}, {edges[i + 1]:g})" for i in range(min(bins, len(edges) - 1))]


def latency_bars(latency: dict[str, Any] | None) -> list[HistogramBar]:
    """The latency bucket counts as one histogram (no baseline): only the buckets up to the last non-empty."""
    if not latency or not sum(latency["counts"]):
        return []
    counts: list[int] = latency["counts"]
    last = max(i for i, c in enumerate(counts) if c)
    uppers = [f"≤{u:g} ms" for u in latency["bucket_upper_ms"]] + ["slower"]
    return histogram(counts[: last + 1], counts[: last + 1], uppers[: last + 1])


def features(drift: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every input feature (and the predicted classes) with its bars."""
    if not drift:
        return []
    items = list(drift["features"]) + ([{**drift["classes"], "name": "predicted class"}] if drift["classes"] else [])
    return [{**f, "bars": histogram(f["baseline_counts"], f["window_counts"],
                                    bin_labels(f.get("edges"), len(f["baseline_counts"])))} for f in items]  # fmt: skip


@router.get("/telemetry/{model}/{version}", response_class=HTMLResponse)
async def telemetry(
    request: Request, model: str, version: int, api: Api, hub: HubDep, session: Session,
    profile: str | None = None, group: str | None = None, tag: str | None = None, period: str | None = None,
) -> Response:  # fmt: skip
    """One version's merged telemetry for the whole fleet, a profile, a group or a tag, over a time range."""
    profile, group, tag = profile or None, group or None, (tag or "").strip() or None
    since = (hub.clock() - RANGES[period]).isoformat() if period in RANGES else None
    cohort = {"profile": profile, "group": group, "tag": tag, "since": since}
    try:
        stats, alerts, devices = await asyncio.gather(
            api.get(f"/api/v1/telemetry/{model}/{version}", **cohort),
            api.get("/api/v1/telemetry/alerts", model=model, version=version, limit=20),
            api.get("/api/v1/devices", limit=10000),
        )
    except ApiFailure as e:
        return failure_page(request, e, session)
    return page(request, "telemetry.html", {
        "model": model, "version": version, "s": stats, "alerts": alerts, "profile": profile, "group": group,
        "tag": tag, "period": period if period in RANGES else "all", "periods": ["all", *RANGES],
        "profiles": sorted({d["profile"] for d in devices}),
        "groups": sorted({d["group"] for d in devices if d["group"]}),
        "features": features(stats["drift"]), "latency": latency_bars(stats["latency_ms"]),
        "chart_w": CHART_W, "chart_h": CHART_H,
    }, session=session)  # fmt: skip
