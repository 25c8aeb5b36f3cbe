"""Dashboard pages under /dashboard: fleet, rollouts (with pause/resume), models, pipelines, audit, sign-in."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from hub.api.deps import HubDep
from hub.dashboard import pipelines_page, telemetry_page, views
from hub.dashboard.auth import (
    COOKIE,
    COOKIE_PATH,
    SESSION_S,
    CsrfRejected,
    Session,
    check_csrf,
    issue_session,
    safe_next,
)
from hub.dashboard.client import Api, ApiFailure, HubApi
from hub.dashboard.render import STATIC_DIR, failure_page, page
from hub.dashboard.trend_charts import rollout_charts
from hub.security import same_secret
from hub.store import audit

log = logging.getLogger(__name__)
router = APIRouter(prefix=COOKIE_PATH, include_in_schema=False)
STATIC_FILES = {p.name for p in Path(STATIC_DIR).iterdir() if p.is_file()}
AUDIT_PAGE = 50


@router.get("/static/{name}")
def static(name: str) -> Response:
    """The dashboard's own CSS and JS (a fixed list, no directory walking)."""
    if name not in STATIC_FILES:
        return Response("not found", status_code=404, media_type="text/plain")
    return FileResponse(Path(STATIC_DIR) / name, headers={"Cache-Control": "public, max-age=300"})


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = None) -> Response:
    return page(request, "login.html", {"next": safe_next(next), "error": None})


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request, hub: HubDep, token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = COOKIE_PATH
) -> Response:
    """Check the admin token once; answer with the signed session cookie (the token itself is not kept)."""
    if not same_secret(token.strip(), hub.admin_token):
        return page(request, "login.html", {"next": safe_next(next), "error": "That is not the admin token."},
                    status_code=401)  # fmt: skip
    now = hub.clock()
    with hub.engine.begin() as conn:
        audit.record(conn=conn, now=now, actor="admin", action="dashboard.login", target="dashboard")
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(COOKIE, issue_session(hub.admin_token, now), max_age=SESSION_S, path=COOKIE_PATH,
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")  # fmt: skip
    return response


@router.post("/logout")
def logout() -> RedirectResponse:
    response = RedirectResponse(f"{COOKIE_PATH}/login", status_code=303)
    response.delete_cookie(COOKIE, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


@router.get("", response_class=HTMLResponse)
async def overview(request: Request, api: Api, hub: HubDep, session: Session) -> Response:
    """Fleet: online/offline, versions per profile, open drift alerts, every device with its last-seen time."""
    devices, rollouts, health, alerts = await asyncio.gather(
        api.get("/api/v1/devices", limit=10000), api.get("/api/v1/rollouts"), api.get("/healthz"),
        api.get("/api/v1/telemetry/alerts", state="open", limit=100),
    )  # fmt: skip
    active = [r for r in rollouts if r["state"] in ("running", "paused", "scheduled")]
    return page(request, "overview.html", {
        "summary": views.fleet_summary(devices), "profiles": views.versions_by_profile(devices),
        "devices": devices, "active_rollouts": active, "health": health, "alerts": alerts, "now": hub.clock(),
    }, session=session)  # fmt: skip


@router.get("/devices/{device_id}", response_class=HTMLResponse)
async def device_detail(request: Request, device_id: str, api: Api, hub: HubDep, session: Session) -> Response:
    """One device: its record (versions, generations, tags) and its newest events."""
    try:
        device, events = await asyncio.gather(
            api.get(f"/api/v1/devices/{device_id}"), api.get(f"/api/v1/devices/{device_id}/events", limit=50)
        )
    except ApiFailure as e:
        return failure_page(request, e, session)
    return page(request, "device.html", {"d": device, "events": events, "now": hub.clock()}, session=session)


@router.get("/rollouts", response_class=HTMLResponse)
async def rollouts_list(request: Request, api: Api, session: Session) -> Response:
    rollouts = await api.get("/api/v1/rollouts")
    rows = [{**r, "progress": views.rollout_progress(r)} for r in reversed(rollouts)]
    return page(request, "rollouts.html", {"rollouts": rows}, session=session)


async def _rollout_trends(
    api: HubApi, rollout: dict[str, Any], now: datetime
) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, str]]:
    """The trend of the version a model rollout ships and of the versions its devices ran before, over its devices
    from shortly before it was created (until now while it is live); pipelines have no telemetry of their own."""
    if rollout.get("kind", "model") != "model":
        return [], {}
    created, updated = views.parse_ts(rollout["created_at"]), views.parse_ts(rollout["updated_at"])
    assert created is not None and updated is not None
    live = rollout["state"] in ("scheduled", "running", "paused")
    end = now if live else min(now, max(updated, created + timedelta(seconds=30)))
    pad = max((end - created) * 0.05, timedelta(seconds=10))
    since, until = created - pad, now if live else min(now, end + pad)
    before = sorted({d["previous_version"] for d in rollout["devices"] or []} - {None, rollout["version"]})
    versions = [(f"v{rollout['version']} (this rollout)", rollout["version"])]
    versions += [(f"v{v} (before)", v) for v in before]
    query = {"since": since.isoformat(), "until": until.isoformat()}
    found = await asyncio.gather(*[
        api.get(f"/api/v1/telemetry/{rollout['model']}/{v}/trend", rollout=rollout["id"], **query)
        for _name, v in versions
    ], return_exceptions=True)  # fmt: skip
    trends = []
    for (name, _v), t in zip(versions, found, strict=True):
        if isinstance(t, ApiFailure):  # e.g. a previous version no longer in the registry: the others still show
            log.info("rollout %s: no trend of %s: %s", rollout["id"], name, t.detail)
        elif isinstance(t, BaseException):
            raise t
        else:
            trends.append((name, t))
    return trends, query


async def _rollout_page(
    request: Request, api: HubApi, session: str, rollout_id: str, *, error: str | None = None,
    done: str | None = None, status_code: int = 200,
) -> Response:  # fmt: skip
    rollout = await api.get(f"/api/v1/rollouts/{rollout_id}")
    waves = [{**w, "segments": views.stacked(w["counts"], w["total"], views.DEVICE_STATE_ORDER)}
             for w in rollout["waves"]]  # fmt: skip
    trends, query = await _rollout_trends(api, rollout, request.app.state.hub.clock())
    return page(request, "rollout.html", {
        "r": rollout, "waves": waves, "progress": views.rollout_progress(rollout),
        "verbs": views.allowed_verbs(rollout["state"]), "destructive": views.DESTRUCTIVE_VERBS,
        "error": error, "done": done, "target": views.target_rows(rollout["spec"].get("target")),
        "limits": views.gate_limit_rows(rollout["spec"]), "trends": trends, "charts": rollout_charts(trends),
        "trend_query": query,
    }, session=session, status_code=status_code)  # fmt: skip


@router.get("/rollouts/{rollout_id}", response_class=HTMLResponse)
async def rollout_detail(
    request: Request, rollout_id: str, api: Api, session: Session, done: str | None = None
) -> Response:
    """Waves with per-state bars, every device's state, and the verbs the state machine allows now."""
    shown = done if done in {v.value for v in views.OPERATOR_VERBS} else None
    try:
        return await _rollout_page(request, api, session, rollout_id, done=shown)
    except ApiFailure as e:
        return failure_page(request, e, session)


@router.post("/rollouts/{rollout_id}/{verb}", response_class=HTMLResponse)
async def rollout_action(
    request: Request, rollout_id: str, verb: str, api: Api, hub: HubDep, session: Session,
    csrf: Annotated[str, Form()] = "",
) -> Response:  # fmt: skip
    """Pause/resume/abort/rollback/start through the real API route, then back to the rollout page."""
    try:
        check_csrf(request, session, hub.admin_token, csrf)
        if verb not in {v.value for v in views.OPERATOR_VERBS}:
            raise ApiFailure(404, f"unknown action {verb!r}")
        await api.post(f"/api/v1/rollouts/{rollout_id}/{verb}")
    except CsrfRejected as e:
        failure = ApiFailure(403, str(e))
    except ApiFailure as e:
        failure = e
    else:
        return RedirectResponse(f"{COOKIE_PATH}/rollouts/{rollout_id}?done={verb}", status_code=303)
    try:  # show the rollout again with the refusal on top (e.g. 409: cannot resume a completed rollout)
        return await _rollout_page(request, api, session, rollout_id, error=failure.detail,
                                   status_code=failure.status_code)  # fmt: skip
    except ApiFailure as e:
        return failure_page(request, e, session)


@router.get("/models", response_class=HTMLResponse)
async def models(request: Request, api: Api, session: Session) -> Response:
    """Every model version with its per-profile artifacts, and the rollouts that shipped it."""
    rows, rollouts = await asyncio.gather(api.get("/api/v1/models"), api.get("/api/v1/rollouts"))
    by_version: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in rollouts:
        by_version.setdefault((r["model"], r["version"]), []).append(r)
    return page(request, "models.html", {"versions": views.model_versions(rows), "rollouts": by_version,
                                         "human_bytes": views.human_bytes}, session=session)  # fmt: skip


@router.get("/audit", response_class=HTMLResponse)
async def audit_log(
    request: Request, api: Api, session: Session, offset: Annotated[int, Query(ge=0, le=2**31)] = 0
) -> Response:
    """The operator audit log, newest first, a page at a time."""
    entries = await api.get("/api/v1/audit", limit=AUDIT_PAGE + 1, offset=offset)
    return page(request, "audit.html", {
        "entries": entries[:AUDIT_PAGE], "offset": offset, "page_size": AUDIT_PAGE,
        "more": len(entries) > AUDIT_PAGE,
    }, session=session)  # fmt: skip


router.include_router(telemetry_page.router)
router.include_router(pipelines_page.router)
