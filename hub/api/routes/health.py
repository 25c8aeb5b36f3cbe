"""Liveness/readiness and Prometheus metrics."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from sqlalchemy import text

from hub.api.deps import HubDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    database: bool
    mqtt_connected: bool
    tuf_timestamp_expires: datetime


@router.get("/healthz", response_model=Health)
def healthz(hub: HubDep) -> Health:
    """Database reachable, broker connection, and when the signed timestamp expires."""
    with hub.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    mqtt = hub.bridge is not None and hub.bridge.connected.is_set()
    expires = hub.repo.load("timestamp").signed.expires
    return Health(status="ok", database=True, mqtt_connected=mqtt, tuf_timestamp_expires=expires)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(hub: HubDep) -> Response:
    """Prometheus exposition format."""
    return Response(generate_latest(hub.metrics.registry), media_type=CONTENT_TYPE_LATEST)
