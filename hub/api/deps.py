"""Dependencies as `Annotated` aliases: the Hub, a DB connection, admin and device authentication."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection

from hub.errors import AuthError, Forbidden
from hub.security import same_secret, sha256_hex
from hub.services import Hub
from hub.store import devices as device_store

bearer = HTTPBearer(auto_error=False, description="Admin token, or a device token on device routes")


def get_hub(request: Request) -> Hub:
    """The Hub the app was built with."""
    hub: Hub = request.app.state.hub
    return hub


HubDep = Annotated[Hub, Depends(get_hub)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def get_conn(hub: HubDep) -> Iterator[Connection]:
    """One transaction per request (committed when the route returns)."""
    with hub.engine.begin() as conn:
        yield conn


ConnDep = Annotated[Connection, Depends(get_conn)]


def require_admin(request: Request, hub: HubDep, creds: Credentials) -> str:
    """The operator; 401 without the admin bearer token. Returns the actor name for the audit log.

    The actor is also kept on the request, so an action the hub refuses (409) is audited too.
    """
    if creds is None or not same_secret(creds.credentials, hub.admin_token):
        raise AuthError("admin bearer token required")
    request.state.actor = "admin"
    return "admin"


AdminDep = Annotated[str, Depends(require_admin)]


class Principal:
    """Who is calling a route open to devices: the admin, or one device."""

    def __init__(self, *, admin: bool, device: dict[str, Any] | None) -> None:
        self.admin = admin
        self.device = device

    def require_device(self, device_id: str) -> None:
        """403 unless the admin or this very device is calling."""
        if not self.admin and (self.device is None or self.device["id"] != device_id):
            raise Forbidden("a device may only access its own resources")


def require_principal(hub: HubDep, creds: Credentials) -> Principal:
    """Admin or an enrolled device; 401 otherwise."""
    if creds is None:
        raise AuthError("bearer token required")
    if same_secret(creds.credentials, hub.admin_token):
        return Principal(admin=True, device=None)
    with hub.engine.connect() as conn:
        device = device_store.by_token(conn=conn, token_sha256=sha256_hex(creds.credentials))
    if device is None:
        raise AuthError("unknown token")
    return Principal(admin=False, device=device)


PrincipalDep = Annotated[Principal, Depends(require_principal)]
