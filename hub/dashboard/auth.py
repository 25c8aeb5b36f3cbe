"""Dashboard sessions: the operator signs in once with the admin token; the browser keeps only a signed cookie.

The cookie is `v1.<expires unix>.<hmac>` keyed by the admin token, so it never contains the token itself,
expires on its own, and every session dies when the admin token is rotated. It is HttpOnly (scripts cannot
read it), SameSite=Strict and scoped to /dashboard; POST forms also carry a CSRF token derived from it.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, HTTPException, Request

from hub.api.deps import HubDep
from hub.security import same_secret

COOKIE = "edgefleet_dashboard"
COOKIE_PATH = "/dashboard"
SESSION_S = 12 * 3600


class CsrfRejected(Exception):
    """A state-changing form without a valid CSRF token or from another origin."""


def _mac(admin_token: str, message: str) -> str:
    return hmac.new(admin_token.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


def issue_session(admin_token: str, now: datetime) -> str:
    """A new cookie value valid for SESSION_S seconds from `now`."""
    expires = int(now.timestamp()) + SESSION_S
    return f"v1.{expires}.{_mac(admin_token, f'session:{expires}')}"


def session_valid(value: str | None, admin_token: str, now: datetime) -> bool:
    """Well-formed, signed with the current admin token, and not expired."""
    if not value:
        return False
    parts = value.split(".")
    if len(parts) != 3 or parts[0] != "v1" or not parts[1].isdigit():
        return False
    if int(parts[1]) < now.timestamp():
        return False
    return same_secret(parts[2], _mac(admin_token, f"session:{parts[1]}"))


def csrf_token(session: str, admin_token: str) -> str:
    """The hidden form field that proves a POST came from a page this hub rendered."""
    return _mac(admin_token, f"csrf:{session}")


def safe_next(path: str | None) -> str:
    """Only redirect back inside the dashboard (no open redirects)."""
    if path and path.startswith(COOKIE_PATH) and not path.startswith("//") and "\\" not in path:
        return path
    return COOKIE_PATH


def login_url(next_path: str) -> str:
    return f"{COOKIE_PATH}/login?next={quote(safe_next(next_path), safe='/')}"


def require_session(request: Request, hub: HubDep) -> str:
    """The session cookie value; without a valid one, a 303 to the login form (and back here afterwards)."""
    value = request.cookies.get(COOKIE)
    if value is None or not session_valid(value, hub.admin_token, hub.clock()):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise HTTPException(status_code=303, detail="sign in first", headers={"Location": login_url(target)})
    return value


Session = Annotated[str, Depends(require_session)]


def check_csrf(request: Request, session: str, admin_token: str, given: str) -> None:
    """A POST must carry the session's CSRF token and, when the browser says, come from this origin."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
        raise CsrfRejected(f"cross-origin form post from {origin}")
    if not same_secret(given, csrf_token(session, admin_token)):
        raise CsrfRejected("missing or stale form token; reload the page")
