"""Pure functions: which devices a rollout targets, which wave each lands in, what a device should run."""

from __future__ import annotations

import hashlib
import math
from datetime import datetime
from typing import Any

from hub.schemas import RolloutTarget
from protocol.http import manifest_target
from protocol.messages import DesiredModel, DesiredPipeline, DesiredState
from protocol.pipeline import pipeline_target
from protocol.shadow import DesiredShadow

# What a rollout ships, and the key of its list in desired and reported states.
UNIT_LISTS = {"model": "models", "pipeline": "pipelines"}


def matches(target: RolloutTarget, device: dict[str, Any]) -> bool:
    """True if the device meets every criterion the target gives."""
    if target.devices is not None and device["id"] not in target.devices:
        return False
    if target.group is not None and device["group_name"] != target.group:
        return False
    if target.profile is not None and device["profile"] != target.profile:
        return False
    tags = device["tags"] or {}
    return all(tags.get(k) == v for k, v in target.tags.items())


def wave_sizes(n: int, canary_percent: float, stages: list[float]) -> list[int]:
    """How many devices each wave gets: a canary (at least one device if any), then cumulative stages.

    A wave that would get no device (3 devices, canary 34 %, stages 67 and 100: 2, 1, then 0) is left out, so no
    rollout waits on or reports an empty wave; with no device at all there is one wave, which devices that
    enroll later join."""
    cumulative: list[int] = []
    if canary_percent > 0 and n > 0:
        cumulative.append(max(1, math.ceil(n * canary_percent / 100)))
    for pct in stages:
        cumulative.append(max(cumulative[-1] if cumulative else 0, math.ceil(n * pct / 100)))
    sizes, prev = [], 0
    for c in cumulative:
        sizes.append(min(c, n) - prev)
        prev = min(c, n)
    return [s for s in sizes if s > 0] or [0]


def assign_waves(rollout_id: str, device_ids: list[str], sizes: list[int]) -> dict[str, int]:
    """Device id -> wave, in a stable pseudo-random order so canaries are not always the same devices."""
    order = sorted(device_ids, key=lambda d: hashlib.sha256(f"{rollout_id}/{d}".encode()).hexdigest())
    waves: dict[str, int] = {}
    i = 0
    for wave, size in enumerate(sizes):
        for d in order[i : i + size]:
            waves[d] = wave
        i += size
    return waves


def current_version(device: dict[str, Any], model: str, kind: str = "model") -> int | None:
    """The version of a model (or pipeline, by `kind`) the device last reported active, else the version it was
    last told to run."""
    key = UNIT_LISTS[kind]
    for m in (device.get("reported") or {}).get(key, []):
        if m.get("name") == model and m.get("active_version"):
            return int(m["active_version"])
    for m in (device.get("desired") or {}).get(key, []):
        if m.get("name") == model:
            return int(m["version"])
    return None


def next_desired(
    device: dict[str, Any],
    *,
    model: str,
    version: int | None,
    rollout_id: str | None,
    rollback: bool,
    now: datetime,
    kind: str = "model",
) -> DesiredState:
    """The device's desired state with `model` (a pipeline's name when `kind` is "pipeline") set to `version`
    (None removes it), which also ends a shadow test of that model; generation + 1."""
    current = device.get("desired") or {}
    keep = {k: [u for u in current.get(k, []) if not (k == UNIT_LISTS[kind] and u.get("name") == model)]
            for k in UNIT_LISTS.values()}  # fmt: skip
    models = [DesiredModel.model_validate(m) for m in keep["models"]]
    pipelines = [DesiredPipeline.model_validate(p) for p in keep["pipelines"]]
    if version is not None and kind == "model":
        target = manifest_target(model, version, device["profile"])
        models.append(
            DesiredModel(name=model, version=version, manifest_target=target, rollback=rollback, rollout_id=rollout_id)
        )
    elif version is not None:
        target = pipeline_target(model, version, device["profile"])
        pipelines.append(
            DesiredPipeline(
                name=model, version=version, pipeline_target=target, rollback=rollback, rollout_id=rollout_id
            )
        )
    models.sort(key=lambda m: m.name)
    pipelines.sort(key=lambda p: p.name)
    shadows = [DesiredShadow.model_validate(s) for s in current.get("shadows", [])
               if not (kind == "model" and s.get("name") == model)]  # fmt: skip
    return DesiredState(
        device_id=device["id"],
        generation=int(device.get("desired_generation") or 0) + 1,
        models=models,
        pipelines=pipelines,
        shadows=shadows,
        issued_at=now,
    )


def shadow_desired(device: dict[str, Any], *, model: str, shadow: DesiredShadow | None, now: datetime) -> DesiredState:
    """The device's desired state with the shadow test of `model` set to `shadow` (None ends it), all else as it
    is; generation + 1."""
    current = DesiredState.model_validate(
        (device.get("desired") or {}) | {"device_id": device["id"], "generation": 0, "issued_at": now}
    )
    shadows = [s for s in current.shadows if s.name != model] + ([shadow] if shadow is not None else [])
    return current.model_copy(
        update={
            "generation": int(device.get("desired_generation") or 0) + 1,
            "shadows": sorted(shadows, key=lambda s: s.name),
            "issued_at": now,
        }
    )
