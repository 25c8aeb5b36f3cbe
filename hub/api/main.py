"""`create_app(settings)`: the FastAPI application, its error handlers and lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from hub.api.docs import install_docs
from hub.api.routes import audit, devices, enroll, health, models, pipelines, rollouts, telemetry, tokens, tuf
from hub.dashboard import routes as dashboard
from hub.errors import HubError
from hub.guard import ASGIApp, Receive, Refused, RequestGuard, Scope, Send
from hub.guard import Message as AsgiMessage
from hub.schemas import Message
from hub.services import Hub
from hub.settings import HubSettings
from hub.store import audit as audit_store
from hub.tuf_repo import Clock, utcnow

log = logging.getLogger(__name__)


def create_app(settings: HubSettings, *, clock: Clock = utcnow, background: bool = True) -> FastAPI:
    """Build the hub (storage, TUF, MQTT) and its API; `background=False` skips MQTT and job threads."""
    hub = Hub(settings=settings, clock=clock)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if background:
            hub.start()
        try:
            yield
        finally:
            hub.stop()

    app = FastAPI(
        title="EdgeFleet hub",
        version="1",
        description="Model registry, TUF repository, devices and health-gated rollouts.",
        lifespan=lifespan,
        docs_url=None,  # served from local assets by install_docs: an air-gapped hub has no CDN
        redoc_url=None,
        responses={422: {"model": Message, "description": "Invalid request"}},
    )
    app.state.hub = hub
    install_docs(app)

    @app.exception_handler(HubError)
    async def _hub_error(request: Request, exc: HubError) -> JSONResponse:
        if exc.status_code >= 500:
            log.error("server-side failure: %s", exc)
        actor = getattr(request.state, "actor", None)
        if exc.status_code == 409 and actor is not None:  # an operator action the hub refused
            await run_in_threadpool(_audit_refusal, hub, actor, request, str(exc))
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else {}
        if isinstance(exc, Refused):  # a body cut mid-stream: the rest of it is never read
            headers["Connection"] = "close"
        return JSONResponse({"detail": str(exc)}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": describe_validation(exc.errors())}, status_code=422)

    app.add_middleware(CountRequests, hub=hub)
    app.add_middleware(RequestGuard, hub=hub)  # added last: the outermost layer, before any body is read

    for module in (health, enroll, tokens, devices, models, pipelines, rollouts, audit):
        app.include_router(module.router)
    app.include_router(tuf.router)
    app.include_router(telemetry.router)
    app.include_router(dashboard.router)
    return app


class CountRequests:
    """Pure ASGI (Starlette's BaseHTTPMiddleware would wrap a streamed body's errors in exception groups):
    counts every answer by method and status."""

    def __init__(self, app: ASGIApp, *, hub: Hub) -> None:
        self.app, self.hub = app, hub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: AsgiMessage) -> None:
            if message["type"] == "http.response.start":
                self.hub.metrics.http_requests.labels(scope["method"], str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


def describe_validation(errors: Sequence[Any]) -> str:
    """FastAPI's error list as one readable line: `body.stages: Value error, ...; query.limit: ...`."""
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _audit_refusal(hub: Hub, actor: str, request: Request, detail: str) -> None:
    """Record a refused operator action in its own transaction (the request's one was rolled back)."""
    with hub.engine.begin() as conn:
        audit_store.record(conn=conn, now=hub.clock(), actor=actor, action="refused", target=request.url.path,
                           details={"method": request.method, "status": 409, "detail": detail})  # fmt: skip
