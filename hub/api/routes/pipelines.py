"""Pipeline versions: push a spec (the hub checks it, runs it per profile, signs it), list, fetch manifests.

The schemas live here rather than in hub/schemas.py while the pipeline API settles; they follow its `Create` in
(`PipelinePush`, extra keys refused) / `Public` out pattern.
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field

from hub.api.deps import AdminDep, ConnDep, HubDep
from hub.errors import NotFound
from hub.pipelines import push_pipeline
from hub.schemas import Message, Strict
from hub.store import audit
from hub.store import pipelines as pipeline_store
from hub.uploads import PUSH_DIR_PREFIX
from protocol.base import Identifier, ModelName, Version
from protocol.http import API_PREFIX

router = APIRouter(
    prefix=f"{API_PREFIX}/pipelines",
    tags=["pipelines"],
    responses={401: {"model": Message}, 404: {"model": Message}, 422: {"model": Message}},
)


class PipelinePush(Strict):
    """A pipeline version to push: the spec as JSON (what `spec_from_toml` reads), optional profiles and samples."""

    spec: dict[str, Any]
    profiles: Annotated[list[Identifier], Field(min_length=1, max_length=64)] | None = None
    # input name -> nested list with a leading sample axis (all inputs the same number of samples)
    samples: dict[str, list[Any]] | None = None


class StageRef(BaseModel):
    model: str
    version: int


class PipelineStagePublic(StageRef):
    manifest_target: str


class PipelineVersionPublic(BaseModel):
    name: str
    version: int
    profile: str
    pipeline_target: str
    manifest_sha256: str
    stages: dict[str, PipelineStagePublic]
    golden_cases: int
    created_at: datetime


class PipelinePushResult(BaseModel):
    stored: list[PipelineVersionPublic]
    unchanged: list[PipelineVersionPublic]


class PipelineSummary(BaseModel):
    name: str
    version: int
    profiles: list[str]
    stages: dict[str, StageRef]
    created_at: datetime


def _public(row: dict[str, Any]) -> PipelineVersionPublic:
    manifest = json.loads(row["manifest"])
    golden = manifest.get("golden") or {}
    return PipelineVersionPublic(
        **{k: row[k] for k in ("name", "version", "profile", "pipeline_target", "manifest_sha256", "created_at")},
        stages=manifest["stages"],
        golden_cases=len(golden.get("cases", [])),
    )


@router.post("", response_model=PipelinePushResult, status_code=201,
             responses={200: {"model": PipelinePushResult}, 409: {"model": Message}})  # fmt: skip
def push(body: PipelinePush, hub: HubDep, actor: AdminDep, response: Response) -> PipelinePushResult:
    """Check the spec against the registry, run it on each profile's artifacts for its golden cases, sign one
    pipeline manifest per profile; 201 if anything new, 200 if every profile was already there, 409 if the
    version exists with another spec."""
    with tempfile.TemporaryDirectory(prefix=PUSH_DIR_PREFIX, dir=hub.settings.data_dir) as tmp:
        outcome = push_pipeline(spec_data=body.spec, profiles=body.profiles, samples=body.samples,
                                engine=hub.engine, repo=hub.repo, work_dir=Path(tmp), now=hub.clock())  # fmt: skip
    with hub.engine.begin() as conn:
        audit.record(conn=conn, now=hub.clock(), actor=actor, action="pipeline.push",
                     target=",".join(f"{r['name']}:{r['version']}:{r['profile']}" for r in outcome.stored) or "-",
                     details={"unchanged": len(outcome.unchanged)})  # fmt: skip
    response.status_code = 201 if outcome.stored else 200
    return PipelinePushResult(stored=[_public(r) for r in outcome.stored],
                              unchanged=[_public(r) for r in outcome.unchanged])  # fmt: skip


@router.get("", response_model=list[PipelineSummary])
def list_pipelines(conn: ConnDep, _actor: AdminDep, name: ModelName | None = None) -> list[PipelineSummary]:
    """Every pipeline version with its profiles and stages; by name, newest version first."""
    grouped: dict[tuple[str, int], PipelineSummary] = {}
    for row in pipeline_store.list_versions(conn=conn, name=name):
        key = (row["name"], row["version"])
        if key in grouped:
            grouped[key].profiles.append(row["profile"])
            continue
        spec = json.loads(row["spec"])
        stages = {s["name"]: StageRef(model=s["model"], version=s["version"]) for s in spec["stages"]}
        grouped[key] = PipelineSummary(name=row["name"], version=row["version"], profiles=[row["profile"]],
                                       stages=stages, created_at=row["created_at"])  # fmt: skip
    return list(grouped.values())


@router.get("/{name}/versions/{version}/{profile}/manifest", response_model=dict[str, Any])
def get_manifest(name: ModelName, version: Version, profile: Identifier, conn: ConnDep, _actor: AdminDep) -> Response:
    """The pipeline manifest as signed (devices fetch it as the TUF target `pipelines/{name}/{version}/{profile}/
    pipeline.json`)."""
    row = pipeline_store.get(conn=conn, name=name, version=version, profile=profile)
    if row is None:
        raise NotFound(f"no pipeline {name} version {version} for profile {profile}")
    return Response(row["manifest"], media_type="application/json")
