"""Which model versions a device may download: its manifest and artifact, as TUF targets or from the registry.

The rule. A device may download (name, version, profile) only if `profile` is the device's own profile and
`version` is one of:

1. the version of `name` in the device's current desired state (a new release, or a rollback the hub
   has ordered, which sets the desired state back to the previous version), or a candidate version of `name`
   its desired state asks it to shadow-test (`shadows`, docs/shadow.md);
2. if the device's most recent rollout of `name` (newest `rollouts.created_at`) was released to it
   (`released_at` set, even if since rolled back): that rollout's version, or the `previous_version`
   recorded for the device in it (its rollback target).

Pipelines (protocol/pipeline.py) follow the same rule as units of their own: a device may download a pipeline
version's manifest (`pipelines/{name}/{version}/{profile}/...`) under (1) and (2) with the pipeline's desired
state and rollouts; and a model version that a pipeline version it may download pins as a stage (read from that
pipeline version's stored spec), since the device installs the stage set from those model targets.

(2) is "recently was": a download cut off by a rollback, or resumed after an agent restart before the
newer desired state arrives, still completes, and the version a released update would roll back to stays
reachable. Versions of older rollouts, and anything the device merely *reports* (the reported state is the
device's own word: a device could name any version there to grant itself access), are refused. The admin may download
anything; TUF metadata stays readable by every enrolled device, since agents need it to verify.

Cost: the device row (with `desired`) is already loaded by the token lookup, so (1) needs no query; only
when (1) fails does (2) run one query (rollout_devices by its device_id index, rollouts by primary key).
A large artifact is fetched as many Range requests, and each of them costs the same.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, select

from hub.db.schema import pipeline_versions, rollout_devices, rollouts
from hub.errors import Forbidden
from hub.metrics import HubMetrics

log = logging.getLogger(__name__)
# models/{name}/{version}/{profile}/{file} (protocol.http.manifest_target / artifact_target), with the
# file hash-named (`<sha256>.<file>`) as the TUF consistent-snapshot URL has it.
TARGET = re.compile(
    r"^(?P<kind>models|pipelines)/(?P<name>[a-z0-9][a-z0-9_-]{0,63})/(?P<version>[1-9][0-9]{0,9})/"
    r"(?P<profile>[A-Za-z0-9_-]{1,64})/[^/]+$"
)
UNIT_LISTS = {"model": "models", "pipeline": "pipelines"}


@dataclass(frozen=True)
class ModelRef:
    """One model (or pipeline, by `kind`) version built for one profile."""

    name: str
    version: int
    profile: str
    kind: str = "model"

    def __str__(self) -> str:
        what = "pipeline " if self.kind == "pipeline" else ""
        return f"{what}{self.name} version {self.version} for profile {self.profile}"


def target_model(target_path: str) -> ModelRef | None:
    """The model or pipeline version a TUF target path belongs to, or None if it is neither's target."""
    match = TARGET.match(target_path)
    if match is None:
        return None
    kind = "model" if match["kind"] == "models" else "pipeline"
    return ModelRef(match["name"], int(match["version"]), match["profile"], kind)


def desired_version(device: dict[str, Any], name: str, kind: str = "model") -> int | None:
    """The version of `name` (a model, or a pipeline by `kind`) in the device's desired state, if any."""
    for unit in (device.get("desired") or {}).get(UNIT_LISTS[kind], []):
        if unit.get("name") == name:
            return int(unit["version"])
    return None


def shadowed(device: dict[str, Any], ref: ModelRef) -> bool:
    """Whether the device's desired state asks it to shadow-test `ref` (a model version)."""
    return ref.kind == "model" and any(
        s.get("name") == ref.name and s.get("version") == ref.version
        for s in (device.get("desired") or {}).get("shadows", [])
    )


def latest_rollout_versions(*, conn: Connection, device_id: str, name: str, kind: str = "model") -> set[int]:
    """If the device's newest rollout of `name` was released to it: that version and the device's rollback target."""
    q = (
        select(rollouts.c.version, rollout_devices.c.released_at, rollout_devices.c.previous_version)
        .join(rollouts, rollouts.c.id == rollout_devices.c.rollout_id)
        .where(rollout_devices.c.device_id == device_id, rollouts.c.model == name, rollouts.c.kind == kind)
        .order_by(rollouts.c.created_at.desc(), rollouts.c.id.desc())
        .limit(1)
    )
    row = conn.execute(q).first()
    if row is None or row.released_at is None:
        return set()
    return {row.version} if row.previous_version is None else {row.version, row.previous_version}


def pinned_by_pipelines(*, conn: Connection, device: dict[str, Any], ref: ModelRef) -> bool:
    """Whether a pipeline version the device may download pins `ref` as a stage (its desired pipelines, and
    each one's latest released rollout version and rollback target)."""
    names = {p.get("name") for p in (device.get("desired") or {}).get("pipelines", [])}
    q = select(rollouts.c.model).join(rollout_devices, rollouts.c.id == rollout_devices.c.rollout_id).where(
        rollout_devices.c.device_id == device["id"], rollouts.c.kind == "pipeline"
    )
    names |= {r[0] for r in conn.execute(q)}
    allowed: set[tuple[str, int]] = set()
    for name in sorted(n for n in names if n):
        desired = desired_version(device, name, "pipeline")
        versions = latest_rollout_versions(conn=conn, device_id=device["id"], name=name, kind="pipeline")
        allowed |= {(name, v) for v in versions | ({desired} if desired is not None else set())}
    for name, version in sorted(allowed):
        row = conn.execute(
            select(pipeline_versions.c.spec).where(
                pipeline_versions.c.name == name,
                pipeline_versions.c.version == version,
                pipeline_versions.c.profile == ref.profile,
            )
        ).first()
        if row is None:
            continue
        stages = json.loads(row.spec).get("stages", [])
        if any(s.get("model") == ref.name and s.get("version") == ref.version for s in stages):
            return True
    return False


def refusal(*, device: dict[str, Any], ref: ModelRef | None, db: Connection | Engine) -> tuple[str, str] | None:
    """(metric reason, message) if the device may not download `ref` (None: not a model target), else None.

    `db` may be an Engine: a connection is then opened only if the desired state does not settle it.
    """
    if ref is None:
        return "not_a_model", "devices may only download the model versions they are told to run"
    if ref.profile != device["profile"]:
        return "other_profile", f"{ref} is not for this device (its profile is {device['profile']})"
    if desired_version(device, ref.name, ref.kind) == ref.version or shadowed(device, ref):
        return None
    with contextlib.ExitStack() as stack:
        conn = stack.enter_context(db.connect()) if isinstance(db, Engine) else db
        recent = latest_rollout_versions(conn=conn, device_id=device["id"], name=ref.name, kind=ref.kind)
        if ref.version in recent:
            return None
        if ref.kind == "model" and pinned_by_pipelines(conn=conn, device=device, ref=ref):
            return None
    return "not_desired", (
        f"{ref} is not in device {device['id']}'s desired state (to run or to shadow-test), nor its latest "
        f"rollout's version or rollback target, nor a stage of such a pipeline; the hub serves a version only to "
        f"the devices it is rolled out to"
    )


def require_download(
    *, device: dict[str, Any], ref: ModelRef | None, db: Connection | Engine, metrics: HubMetrics, what: str
) -> None:
    """Forbidden (403, counted and logged) unless the device may download `ref` (see the module docstring)."""
    refused = refusal(device=device, ref=ref, db=db)
    if refused is None:
        return
    reason, message = refused
    metrics.artifact_refusals.labels(reason).inc()
    log.warning("refused %s to device %s (%s): %s", what, device["id"], reason, message)
    raise Forbidden(message)
