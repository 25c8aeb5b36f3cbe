"""The model registry: push a converter output folder (tar.gz or multipart files), list, fetch manifests."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Response, UploadFile

from hub.api.deps import AdminDep, ConnDep, HubDep, PrincipalDep
from hub.errors import InvalidInput, NotFound
from hub.registry import extract_tar, push_folder, safe_relative
from hub.schemas import Message, ModelVersionPublic, PushResult
from hub.store import audit
from hub.store import models as model_store
from protocol.base import Identifier, ModelName, Version
from protocol.http import API_PREFIX

router = APIRouter(
    prefix=f"{API_PREFIX}/models",
    tags=["models"],
    responses={401: {"model": Message}, 404: {"model": Message}, 422: {"model": Message}},
)


def _public(row: dict[str, Any]) -> ModelVersionPublic:
    return ModelVersionPublic(**{k: row[k] for k in ModelVersionPublic.model_fields})


def _copy_limited(src: Any, dest: Path, budget: list[int]) -> None:
    with dest.open("wb") as out:
        while chunk := src.read(1 << 20):
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise InvalidInput("upload too large")
            out.write(chunk)


@router.post("", response_model=PushResult, responses={200: {"model": PushResult}, 409: {"model": Message}})
def push(
    hub: HubDep,
    actor: AdminDep,
    response: Response,
    archive: Annotated[UploadFile | None, File(description="the output folder as .tar.gz")] = None,
    files: Annotated[list[UploadFile] | None, File(description="files named by relative path")] = None,
) -> PushResult:
    """Store every `<profile>/manifest.json` + artifact of the folder; 201 if anything new, 409 if it differs."""
    if (archive is None) == (not files):
        raise InvalidInput("send either `archive` (a .tar.gz of the folder) or `files`, not both or neither")
    budget = [hub.settings.max_upload_bytes]
    with tempfile.TemporaryDirectory(prefix="edgefleet-push-", dir=hub.settings.data_dir) as tmp:
        folder = Path(tmp) / "upload"
        folder.mkdir()
        if archive is not None:
            raw = Path(tmp) / "upload.tar"
            _copy_limited(archive.file, raw, budget)
            with raw.open("rb") as f:
                extract_tar(f, folder, max_bytes=budget[0] + raw.stat().st_size)
        else:
            for upload in files or []:
                rel = safe_relative(upload.filename or "")
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                _copy_limited(upload.file, folder / rel, budget)
        outcome = push_folder(folder=folder, engine=hub.engine, repo=hub.repo, now=hub.clock())
        shutil.rmtree(folder, ignore_errors=True)
    with hub.engine.begin() as conn:
        audit.record(conn=conn, now=hub.clock(), actor=actor, action="model.push",
                     target=",".join(f"{r['name']}:{r['version']}:{r['profile']}" for r in outcome.stored) or "-",
                     details={"unchanged": len(outcome.unchanged)})  # fmt: skip
    response.status_code = 201 if outcome.stored else 200
    return PushResult(stored=[_public(r) for r in outcome.stored], unchanged=[_public(r) for r in outcome.unchanged])


@router.get("", response_model=list[ModelVersionPublic])
def list_models(conn: ConnDep, _actor: AdminDep, name: ModelName | None = None) -> list[ModelVersionPublic]:
    """Every version and profile in the registry."""
    return [_public(r) for r in model_store.list_versions(conn=conn, name=name)]


@router.get("/{name}/versions/{version}/{profile}/manifest", response_model=dict[str, Any])
def get_manifest(name: ModelName, version: Version, profile: Identifier, conn: ConnDep, _who: PrincipalDep) -> Response:
    """The manifest as pushed (the TUF target is the verified copy)."""
    row = model_store.get(conn=conn, name=name, version=version, profile=profile)
    if row is None:
        raise NotFound(f"no {name} version {version} for profile {profile}")
    return Response(row["manifest"], media_type="application/json")
