"""The audit log of operator actions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from hub.api.deps import AdminDep, ConnDep
from hub.schemas import AuditEntryPublic, Message
from hub.store import audit as audit_store
from protocol.http import API_PREFIX

router = APIRouter(prefix=f"{API_PREFIX}/audit", tags=["audit"], responses={401: {"model": Message}})


@router.get("", response_model=list[AuditEntryPublic])
def list_audit(
    conn: ConnDep,
    _actor: AdminDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> list[AuditEntryPublic]:
    """Newest first."""
    return [AuditEntryPublic(**r) for r in audit_store.list_entries(conn=conn, limit=limit, offset=offset)]
