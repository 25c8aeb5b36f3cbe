"""Liveness/readiness and Prometheus metrics (behind `metrics_token` when it is set)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import text

from hub.api.deps import Credentials, HubDep
from hub.errors import AuthError
from hub.schemas import Message
from hub.security import same_secret

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str = Field(description='"ok", or "degraded" while MQTT is enabled and the broker is not connected')
    database: bool
    mqtt_connected: bool
    tuf_timestamp_expires: datetime
    leader: bool = Field(description="this replica holds the leader lease: it runs rollouts, monitor, TUF refresh")
    replica: str = Field(description="this replica's id (host-pid), as in the logs and the audit log")


@router.get("/healthz", response_model=Health)
def healthz(hub: HubDep) -> Health:
    """Database reachable, broker connection, when the signed timestamp expires, and whether this replica leads."""
    with hub.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    mqtt = hub.bridge is not None and hub.bridge.connected.is_set()
    expires = hub.repo.load("timestamp").signed.expires
    # With MQTT on and the broker out of reach the API still serves (downloads, pushes), but no desired state
    # goes out and nothing comes in: "degraded", still 200 so a load balancer keeps the replica.
    status = "degraded" if hub.settings.mqtt_enabled and not mqtt else "ok"
    return Health(status=status, database=True, mqtt_connected=mqtt, tuf_timestamp_expires=expires,
                  leader=hub.is_leader, replica=hub.replica_id)  # fmt: skip


def require_metrics_reader(hub: HubDep, creds: Credentials) -> None:
    """With `metrics_token` set, 401 unless the bearer is it (or the admin token); open when it is unset or empty.

    Prometheus gets a token of its own (`authorization: {credentials_file: ...}` in its scrape config), so
    the admin token need not sit on the monitoring host; the admin token works too, for an operator's curl.
    """
    expected = hub.settings.metrics_token
    if not expected:
        return
    given = creds.credentials if creds is not None else ""
    metrics_ok = same_secret(given, expected)
    admin_ok = same_secret(given, hub.admin_token)  # both compared, so the timing tells neither apart
    if not (metrics_ok or admin_ok):
        hub.metrics.metrics_auth_failures.inc()
        raise AuthError("metrics bearer token required")


@router.get(
    "/metrics",
    response_class=Response,
    dependencies=[Depends(require_metrics_reader)],
    responses={200: {"content": {"text/plain": {}}}, 401: {"model": Message}},
)
def metrics(hub: HubDep) -> Response:
    """Prometheus exposition format."""
    return Response(generate_latest(hub.metrics.registry), media_type=CONTENT_TYPE_LATEST)
