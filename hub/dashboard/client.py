"""The dashboard reads and acts through the hub's own JSON API, in process (ASGI), as the admin.

Going through the API rather than the store keeps one source of truth: the numbers a page shows are
what `GET /api/v1/...` returns, and pause/resume run the same route (auth, audit, state machine).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
from fastapi import Depends, Request

from hub.dashboard.auth import Session

INTERNAL_BASE = "http://hub.internal"


class ApiFailure(Exception):
    """The API answered 4xx/5xx; `detail` is its message."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"{status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class HubApi:
    """A thin async client for the routes under /api/v1 (and /healthz)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self._client = client

    async def get(self, path: str, **params: Any) -> Any:
        """GET and decode JSON; ApiFailure on an error status."""
        return self._decode(await self._client.get(path, params={k: v for k, v in params.items() if v is not None}))

    async def post(self, path: str, json: Any = None) -> Any:
        """POST (JSON body or none) and decode JSON; ApiFailure on an error status."""
        return self._decode(await self._client.post(path, json=json))

    @staticmethod
    def _decode(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                detail = str(response.json().get("detail", response.text))
            except ValueError:
                detail = response.text
            raise ApiFailure(response.status_code, detail)
        return response.json()


async def hub_api(request: Request, _session: Session) -> AsyncIterator[HubApi]:
    """A client bound to this very app, authenticated as the admin (only after the session is checked)."""
    hub = request.app.state.hub
    transport = httpx.ASGITransport(app=request.app)
    headers = {"Authorization": f"Bearer {hub.admin_token}"}
    async with httpx.AsyncClient(transport=transport, base_url=INTERNAL_BASE, headers=headers, timeout=30) as c:
        yield HubApi(c)


Api = Annotated[HubApi, Depends(hub_api)]
