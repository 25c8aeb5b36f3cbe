"""Operator-issued enrollment tokens (single use or a use count, with an expiry)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter

from hub.api.deps import AdminDep, ConnDep, HubDep
from hub.schemas import EnrollmentTokenCreate, EnrollmentTokenPublic, Message
from hub.security import new_token, sha256_hex
from hub.store import audit
from hub.store import devices as device_store
from protocol.http import API_PREFIX

router = APIRouter(prefix=f"{API_PREFIX}/enrollment-tokens", tags=["enrollment"], responses={401: {"model": Message}})


@router.post("", response_model=EnrollmentTokenPublic, status_code=201)
def create_token(body: EnrollmentTokenCreate, hub: HubDep, conn: ConnDep, actor: AdminDep) -> EnrollmentTokenPublic:
    """Issue a token; the secret is shown only in this response."""
    now = hub.clock()
    token = new_token("efe")
    expires = now + timedelta(seconds=body.ttl_s)
    token_id = device_store.create_enrollment_token(
        conn=conn, now=now, token_sha256=sha256_hex(token), uses=body.uses, expires_at=expires,
        group=body.group, tags=body.tags,
    )  # fmt: skip
    audit.record(conn=conn, now=now, actor=actor, action="enrollment_token.create", target=token_id,
                 details={"uses": body.uses, "ttl_s": body.ttl_s, "group": body.group})  # fmt: skip
    return EnrollmentTokenPublic(id=token_id, token=token, uses_left=body.uses, expires_at=expires, group=body.group)


@router.get("", response_model=list[EnrollmentTokenPublic])
def list_tokens(conn: ConnDep, _actor: AdminDep) -> list[EnrollmentTokenPublic]:
    """Every token without its secret."""
    return [
        EnrollmentTokenPublic(id=r["id"], uses_left=r["uses_left"], expires_at=r["expires_at"], group=r["group_name"])
        for r in device_store.list_enrollment_tokens(conn=conn)
    ]
