"""Pipelines: every pipeline version with the devices running it; one version's stages, steps, wiring, rollouts,
and per stage its share of the latency and its drift.

Versions, specs, rollouts and devices come from the JSON API, as on every page. Stage telemetry is merged over the
devices that run the pipeline version now: a cohort the telemetry API cannot name (it takes one device, a group or
tags), so this page calls the functions `GET /api/v1/telemetry/{model}/{version}` calls (`merged_telemetry`,
`baseline_for`, `cohort_stats`) with that device set. The numbers are computed as the API and the telemetry page
compute them, only for these devices: a stage model also served alone, or by another pipeline, elsewhere in the
fleet does not count.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from hub.api.deps import HubDep
from hub.dashboard import views
from hub.dashboard.auth import Session
from hub.dashboard.client import Api, ApiFailure
from hub.dashboard.render import failure_page, page
from hub.dashboard.telemetry_page import RANGES
from hub.telemetry.query import Cohort, baseline_for, merged_telemetry
from hub.telemetry.schemas import TelemetryStats
from hub.telemetry.stats import cohort_stats
from protocol.pipeline import INPUTS, PipelineSpec, StageSpec, split_ref

router = APIRouter()
DEFAULT_PERIOD = "24h"


@dataclass(frozen=True)
class RunStep:
    """One node of the pipeline in run order: a stage (model version) or a built-in step (op and params)."""

    position: int
    name: str
    kind: str  # stage | step
    model: str | None
    version: int | None
    op: str | None
    params: list[tuple[str, str]]
    inputs: list[tuple[str, str]]  # (the node's input, where it comes from)


@dataclass(frozen=True)
class Wire:
    """One edge: a pipeline input or a node's output feeds a node's input or a pipeline output."""

    source: str  # "input features" or "embed.y"
    target: str  # "head.x" or "output label"


@dataclass(frozen=True)
class StageTelemetry:
    """One stage's model version over the pipeline version's devices: latency p50, its share, drift."""

    stage: str
    model: str
    version: int
    n: int
    devices: int
    p50: float | None
    p95: float | None
    share: float | None
    error_rate: float | None
    drift_score: float | None
    dataset_drift: bool
    drifted_features: list[str]


@dataclass(frozen=True)
class ShareSegment:
    """One stage's piece of the latency bar, in percent of its width; `slot` picks its colour."""

    stage: str
    share: float
    x: float
    width: float
    slot: int


def running_counts(devices: list[dict[str, Any]]) -> Counter[tuple[str, int]]:
    """(pipeline, version) -> how many devices report it active now."""
    counts: Counter[tuple[str, int]] = Counter()
    for d in devices:
        for name, version in (d.get("current_pipelines") or {}).items():
            if version is not None:
                counts[(name, version)] += 1
    return counts


def source_label(ref: str) -> str:
    """`inputs.features` -> `input features`; a node's output stays `node.tensor`."""
    node, tensor = split_ref(ref)
    return f"input {tensor}" if node == INPUTS else ref


def readable(value: Any) -> str:
    """A parameter value as an operator reads it: yes/no, 0.5, (28, 28), none."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return "(" + ", ".join(readable(v) for v in value) + ")"
    return str(value)


def run_order(spec: PipelineSpec) -> list[RunStep]:
    """The nodes in the order the runner executes them, each with its wiring and (for steps) readable params."""
    rows = []
    for position, node in enumerate(spec.order(), start=1):
        inputs = [(tensor, source_label(ref)) for tensor, ref in node.inputs.items()]
        if isinstance(node, StageSpec):
            rows.append(RunStep(position, node.name, "stage", node.model, node.version, None, [], inputs))
            continue
        params = [(k, readable(v)) for k, v in node.params.model_dump().items() if k != "op"]
        rows.append(RunStep(position, node.name, "step", None, None, node.params.op, params, inputs))
    return rows


def wiring(spec: PipelineSpec) -> list[Wire]:
    """Every edge, in run order of the consuming node, then the pipeline's outputs."""
    wires = [Wire(source_label(ref), f"{node.name}.{tensor}") for node in spec.order()
             for tensor, ref in node.inputs.items()]  # fmt: skip
    return wires + [Wire(source_label(ref), f"output {name}") for name, ref in spec.outputs.items()]


def latency_shares(p50s: Mapping[str, float | None]) -> dict[str, float]:
    """Each stage's p50 over the sum of the p50s of the stages that have one (stages without latency are left out)."""
    known = {stage: p for stage, p in p50s.items() if p is not None}
    total = sum(known.values())
    return {stage: p / total for stage, p in known.items()} if total > 0 else {}


def stage_telemetry(
    engine: Engine, spec: PipelineSpec, device_ids: Collection[str], since: datetime | None
) -> list[StageTelemetry]:
    """Per stage, in run order: its model version's telemetry merged over `device_ids` since `since`."""
    stages = [n for n in spec.order() if isinstance(n, StageSpec)]
    cohort = Cohort(device_ids=frozenset(device_ids), since=since)
    stats = {}
    with engine.connect() as conn:
        for s in stages:
            merged = merged_telemetry(conn, model=s.model, version=s.version, cohort=cohort)
            baseline = baseline_for(conn, model=s.model, version=s.version, profile=None)
            stats[s.name] = cohort_stats(model=s.model, version=s.version, cohort=cohort, merged=merged,
                                         baseline=baseline)  # fmt: skip
    shares = latency_shares({name: st.latency_ms.p50 if st.latency_ms else None for name, st in stats.items()})
    return [_stage_row(s, stats[s.name], shares.get(s.name)) for s in stages]


def _stage_row(stage: StageSpec, stats: TelemetryStats, share: float | None) -> StageTelemetry:
    latency, drift = stats.latency_ms, stats.drift
    return StageTelemetry(
        stage=stage.name, model=stage.model, version=stage.version, n=stats.n, devices=stats.devices,
        p50=latency.p50 if latency else None, p95=latency.p95 if latency else None, share=share,
        error_rate=stats.error_rate, drift_score=drift.score if drift else None,
        dataset_drift=bool(drift and drift.dataset_drift), drifted_features=drift.drifted_features if drift else [],
    )  # fmt: skip


def share_segments(stages: list[StageTelemetry]) -> list[ShareSegment]:
    """The stages with a latency share, left to right in run order."""
    segments, x = [], 0.0
    for slot, s in enumerate(stages):
        if s.share is None:
            continue
        segments.append(ShareSegment(s.stage, s.share, round(x, 3), round(100 * s.share, 3), slot % 6))
        x += 100 * s.share
    return segments


@router.get("/pipelines", response_class=HTMLResponse)
async def pipelines(request: Request, api: Api, session: Session) -> Response:
    """Every pipeline version: profiles, stages, when it was pushed, devices running it, its rollouts."""
    versions, devices, rollouts = await asyncio.gather(
        api.get("/api/v1/pipelines"), api.get("/api/v1/devices", limit=10000), api.get("/api/v1/rollouts")
    )
    by_version: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rollouts:
        if r.get("kind") == "pipeline":
            by_version.setdefault((r["model"], r["version"]), []).append(r)
    grouped: dict[str, list[dict[str, Any]]] = {}
    for v in versions:
        grouped.setdefault(v["name"], []).append(v)
    return page(request, "pipelines.html", {
        "pipelines": sorted(grouped.items()), "running": running_counts(devices), "rollouts": by_version,
    }, session=session)  # fmt: skip


@router.get("/pipelines/{name}/{version}", response_class=HTMLResponse)
async def pipeline_detail(
    request: Request, name: str, version: int, api: Api, hub: HubDep, session: Session, period: str | None = None
) -> Response:
    """One pipeline version: run order, steps, wiring, rollouts, and per stage the latency share and drift."""
    period = period if period in RANGES or period == "all" else DEFAULT_PERIOD
    since = hub.clock() - RANGES[period] if period in RANGES else None
    try:
        versions, devices, rollouts = await asyncio.gather(
            api.get("/api/v1/pipelines", name=name), api.get("/api/v1/devices", limit=10000),
            api.get("/api/v1/rollouts"),
        )  # fmt: skip
        found = next((v for v in versions if v["version"] == version), None)
        if found is None:
            raise ApiFailure(404, f"no pipeline {name} version {version}")
        manifest = await api.get(f"/api/v1/pipelines/{name}/versions/{version}/{found['profiles'][0]}/manifest")
    except ApiFailure as e:
        return failure_page(request, e, session)
    spec = PipelineSpec.model_validate(manifest["spec"])
    running = sorted(d["id"] for d in devices if (d.get("current_pipelines") or {}).get(name) == version)
    stages = await run_in_threadpool(stage_telemetry, hub.engine, spec, running, since) if running else []
    mine = [{**r, "progress": views.rollout_progress(r)} for r in reversed(rollouts)
            if r.get("kind") == "pipeline" and r["model"] == name and r["version"] == version]  # fmt: skip
    return page(request, "pipeline.html", {
        "p": found, "spec": spec, "nodes": run_order(spec), "wires": wiring(spec), "running": running,
        "stages": stages, "has_telemetry": any(s.n for s in stages), "rollouts": mine, "period": period,
        "periods": ["all", *RANGES], "share_segments": share_segments(stages),
    }, session=session)  # fmt: skip
