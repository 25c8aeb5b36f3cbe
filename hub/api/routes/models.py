"""The model registry: push a converter output folder (tar.gz or multipart files), list, fetch manifests."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from hub.access import ModelRef, require_download
from hub.api.deps import AdminDep, ConnDep, HubDep, PrincipalDep
from hub.errors import NotFound
from hub.registry import PushOutcome, extract_tar, push_folder
from hub.schemas import Message, ModelVersionPublic, PushResult
from hub.services import Hub
from hub.store import audit
from hub.store import models as model_store
from hub.uploads import PUSH_DIR_PREFIX, ReceivedPush, receive_push
from protocol.base import Identifier, ModelName, Version
from protocol.http import API_PREFIX

router = APIRouter(
    prefix=f"{API_PREFIX}/models",
    tags=["models"],
    responses={401: {"model": Message}, 404: {"model": Message}, 422: {"model": Message}},
)


def _public(row: dict[str, Any]) -> ModelVersionPublic:
    return ModelVersionPublic(**{k: row[k] for k in ModelVersionPublic.model_fields})


_PUSH_BODY = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "properties": {
                "archive": {"type": "string", "format": "binary", "description": "the output folder as .tar.gz"},
                "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                          "description": "files named by relative path"},
            },
        }}},
    }
}  # fmt: skip


@router.post("", response_model=PushResult, openapi_extra=_PUSH_BODY,
             responses={200: {"model": PushResult}, 409: {"model": Message}, 413: {"model": Message}})  # fmt: skip
async def push(request: Request, hub: HubDep, actor: AdminDep, response: Response) -> PushResult:
    """Store every `<profile>/manifest.json` + artifact of the folder; 201 if anything new, 409 if it differs.

    The body streams to a folder under the data dir (never the system's temp dir), cut at `max_upload_bytes`."""
    with tempfile.TemporaryDirectory(prefix=PUSH_DIR_PREFIX, dir=hub.settings.data_dir) as tmp:
        received = await receive_push(request.headers.get("content-type"), request.stream(), Path(tmp),
                                      max_bytes=hub.settings.max_upload_bytes)  # fmt: skip
        outcome = await run_in_threadpool(_publish, hub, received)
    with hub.engine.begin() as conn:
        audit.record(conn=conn, now=hub.clock(), actor=actor, action="model.push",
                     target=",".join(f"{r['name']}:{r['version']}:{r['profile']}" for r in outcome.stored) or "-",
                     details={"unchanged": len(outcome.unchanged)})  # fmt: skip
    response.status_code = 201 if outcome.stored else 200
    return PushResult(stored=[_public(r) for r in outcome.stored], unchanged=[_public(r) for r in outcome.unchanged])


def _publish(hub: Hub, received: ReceivedPush) -> PushOutcome:
    """Unpack an archive (member by member, within the cap), then check and publish the folder."""
    if received.archive is not None:
        with received.archive.open("rb") as f:
            extract_tar(f, received.folder, max_bytes=hub.settings.max_upload_bytes)
        received.archive.unlink()
    return push_folder(folder=received.folder, engine=hub.engine, repo=hub.repo, now=hub.clock())


@router.get("", response_model=list[ModelVersionPublic])
def list_models(conn: ConnDep, _actor: AdminDep, name: ModelName | None = None) -> list[ModelVersionPublic]:
    """Every version and profile in the registry."""
    return [_public(r) for r in model_store.list_versions(conn=conn, name=name)]


@router.get("/{name}/versions/{version}/{profile}/manifest", response_model=dict[str, Any],
            responses={403: {"model": Message}})  # fmt: skip
def get_manifest(
    name: ModelName, version: Version, profile: Identifier, hub: HubDep, conn: ConnDep, who: PrincipalDep
) -> Response:
    """The manifest as pushed (the TUF target is the verified copy); a device gets only those rolled out to it."""
    if who.device is not None:  # checked before the lookup, so a device cannot probe what exists
        require_download(device=who.device, ref=ModelRef(name, version, profile), db=conn, metrics=hub.metrics,
                         what="manifest")  # fmt: skip
    row = model_store.get(conn=conn, name=name, version=version, profile=profile)
    if row is None:
        raise NotFound(f"no {name} version {version} for profile {profile}")
    return Response(row["manifest"], media_type="application/json")
