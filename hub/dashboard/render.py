"""Jinja2 templates and the headers every dashboard page carries (strict CSP, no caching)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates

from hub.dashboard import views, waves
from hub.dashboard.auth import csrf_token
from hub.dashboard.client import ApiFailure

HERE = Path(__file__).parent
STATIC_DIR = str(HERE / "static")
templates = Jinja2Templates(directory=str(HERE / "templates"))
templates.env.filters["tojson_pretty"] = lambda v: json.dumps(v, sort_keys=True, default=str)
templates.env.filters["short"] = lambda v, n=12: (str(v)[:n] + "…") if v and len(str(v)) > n else (v or "")
templates.env.filters["pct"] = lambda v: "-" if v is None else f"{100 * float(v):.1f}%"
templates.env.globals["ago"] = views.ago
templates.env.globals["alert_features"] = views.alert_features
templates.env.globals["wave_label"] = waves.wave_label
templates.env.globals["wave_name"] = waves.wave_name
templates.env.globals["wave_position"] = waves.wave_position
templates.env.filters["num"] = lambda v, d=2: "-" if v is None else f"{float(v):.{d}f}"
templates.env.filters["duration"] = views.duration

NAV = [("/dashboard", "Fleet"), ("/dashboard/rollouts", "Rollouts"), ("/dashboard/models", "Models"),
       ("/dashboard/pipelines", "Pipelines"), ("/dashboard/audit", "Audit log")]  # fmt: skip
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def page(
    request: Request, name: str, context: dict[str, Any], *, session: str | None = None, status_code: int = 200
) -> Response:
    """Render `name` with the navigation, the form CSRF token (when signed in) and the security headers."""
    hub = request.app.state.hub
    base = {
        "nav": NAV,
        "path": request.url.path,
        "signed_in": session is not None,
        "csrf": csrf_token(session, hub.admin_token) if session else "",
    }
    response = templates.TemplateResponse(request, name, {**base, **context}, status_code=status_code)
    response.headers.update(SECURITY_HEADERS)
    return response


def failure_page(request: Request, failure: ApiFailure, session: str) -> Response:
    """The API's own message on a page with the same status (e.g. 404 for an unknown rollout)."""
    return page(request, "error.html", {"status": failure.status_code, "detail": failure.detail},
                session=session, status_code=failure.status_code)  # fmt: skip
