"""API schemas (`Create` in, `Public` out) for the operator routes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hub.telemetry.health import TelemetryLimits
from protocol.base import Identifier, ModelName, Version

Percent = Annotated[float, Field(gt=0, le=100)]
Share = Annotated[float, Field(ge=0, le=1)]


class Strict(BaseModel):
    """Request bodies refuse unknown fields."""

    model_config = ConfigDict(extra="forbid")


class EnrollmentTokenCreate(Strict):
    uses: Annotated[int, Field(ge=1, le=1_000_000)] = 1
    ttl_s: Annotated[int, Field(ge=1, le=365 * 86400)] = 86400
    group: Identifier | None = None
    tags: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=256)]] = Field(
        default_factory=dict
    )


class EnrollmentTokenPublic(BaseModel):
    id: str
    token: str | None = None  # only in the response that created it
    uses_left: int
    expires_at: datetime
    group: str | None


class DevicePublic(BaseModel):
    id: str
    profile: str
    group: str | None
    tags: dict[str, str]
    online: bool
    last_seen: datetime | None
    agent_version: str
    current_versions: dict[str, int | None]
    desired_versions: dict[str, int]
    current_pipelines: dict[str, int | None] = Field(default_factory=dict)
    desired_pipelines: dict[str, int] = Field(default_factory=dict)
    shadowing: dict[str, int] = Field(default_factory=dict)  # candidates it is asked to shadow-test: name -> version
    desired_generation: int
    applied_generation: int
    enrolled_at: datetime


class DeviceUpdate(Strict):
    group: Identifier | None = None
    tags: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=256)]] | None = None


class ModelVersionPublic(BaseModel):
    name: str
    version: int
    profile: str
    manifest_target: str
    artifact_target: str
    artifact_sha256: str
    artifact_size: int
    created_at: datetime


class PushResult(BaseModel):
    stored: list[ModelVersionPublic]
    unchanged: list[ModelVersionPublic]


class RolloutTarget(Strict):
    """Devices a rollout is for; every given criterion must match (empty = the whole fleet)."""

    group: Identifier | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    profile: Identifier | None = None
    devices: list[Identifier] | None = None


class ShadowSpec(Strict):
    """A shadow phase before each wave activates (docs/rollouts.md#shadow): the wave's devices run the candidate
    beside the serving version on `fraction` of their live requests, after each reply; the wave activates once
    the pooled evidence has `min_samples` compared rows within the limits. Otherwise the rollout pauses (or
    rolls back with `auto_rollback`), the reason giving the numbers."""

    fraction: Annotated[float, Field(gt=0, le=1)] = 0.1
    min_samples: Annotated[int, Field(ge=1, le=10_000_000)] = 200
    max_disagreement: Share = 0.05  # top-1 disagreement (classifiers), out-of-tolerance rows (regressors)
    max_latency_ratio: Annotated[float, Field(gt=0)] = 1.5  # candidate mean latency over the serving version's
    max_duration_s: Annotated[float, Field(gt=0, le=30 * 86400)] = 3600.0  # to gather min_samples


class RolloutCreate(Strict):
    """A rollout of a model version (`model`) or of a pipeline version (`pipeline`): exactly one of the two."""

    id: Identifier | None = None
    model: ModelName | None = None
    pipeline: ModelName | None = None
    version: Version
    target: RolloutTarget = Field(default_factory=RolloutTarget)
    canary_percent: Annotated[float, Field(ge=0, le=100)] = 10.0
    stages: list[Percent] = Field(default_factory=lambda: [100.0], min_length=1, max_length=20)
    success_threshold: Share = 1.0
    error_threshold: Share = 0.0
    timeout_s: Annotated[float, Field(gt=0, le=30 * 86400)] = 3600.0
    probation_s: Annotated[float, Field(ge=0, le=30 * 86400)] = 60.0
    auto_rollback: bool = False
    gates: list[str] = Field(default_factory=lambda: ["self_test"])
    gate_limits: TelemetryLimits = Field(default_factory=TelemetryLimits)  # telemetry gates (docs/telemetry.md)
    shadow: ShadowSpec | None = None  # a shadow test before each wave activates (models only)
    start: bool = True

    @property
    def kind(self) -> str:
        return "pipeline" if self.pipeline is not None else "model"

    @property
    def name(self) -> str:
        name = self.pipeline if self.pipeline is not None else self.model
        assert name is not None  # the validator requires one
        return name

    @model_validator(mode="after")
    def _one_unit(self) -> Self:
        if (self.model is None) == (self.pipeline is None):
            raise ValueError("give either model or pipeline (the name of what the rollout ships), not both")
        if self.pipeline is not None and self.shadow is not None:
            raise ValueError("shadow tests are not available for pipeline rollouts yet; leave out shadow")
        return self

    @model_validator(mode="after")
    def _stages_grow(self) -> Self:
        if any(b <= a for a, b in zip(self.stages, self.stages[1:], strict=False)):
            raise ValueError("stages must be strictly increasing cumulative percentages")
        if self.stages[-1] != 100:
            raise ValueError("the last stage must be 100 (percent of the target)")
        return self


class RolloutScope(Strict):
    """Apply a verb to the whole rollout (empty), one group, or one device."""

    group: Identifier | None = None
    device_id: Identifier | None = None


class ShadowEvidence(BaseModel):
    """A wave's pooled shadow evidence (hub/rollouts/shadow.py) and what the hub concluded from it."""

    samples: int
    agreed: int
    failed: int  # requests the candidate could not answer
    dropped: int  # sampled but not run: the device's shadow queue was full
    disagreement: float | None
    latency_ratio: float | None
    mean_abs_error: float | None
    devices: int  # devices that sent evidence
    refused: dict[str, str] = Field(default_factory=dict)  # device -> why it could not shadow the candidate
    verdict: Literal["collecting", "passed", "failed", "accepted"]
    reason: str | None = None
    started_at: datetime | None = None


class WaveProgress(BaseModel):
    wave: int
    total: int
    released: bool
    counts: dict[str, int]
    shadow: ShadowEvidence | None = None


class RolloutDevicePublic(BaseModel):
    device_id: str
    wave: int
    state: str
    held: bool = False
    previous_version: int | None
    reason: str | None


class RolloutPublic(BaseModel):
    id: str
    kind: str = "model"  # "pipeline": `model` is the pipeline's name
    model: str
    version: int
    state: str
    current_wave: int
    reason: str | None
    spec: dict[str, Any]
    waves: list[WaveProgress]
    devices: list[RolloutDevicePublic] | None = None
    created_at: datetime
    updated_at: datetime


class AuditEntryPublic(BaseModel):
    id: int
    ts: datetime
    actor: str
    action: str
    target: str
    details: dict[str, Any]


class Message(BaseModel):
    detail: str
