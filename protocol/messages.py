"""MQTT payloads (wire version 1): desired state, reported state, events, commands, status, acks.

Every payload is canonical JSON of one of these models. A receiver validates with
`parse_message(Model, payload)`; a malformed payload raises `ValidationError` and must be logged
and counted, never crash the receiver.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, SerializerFunctionWrapHandler, model_serializer

from protocol.base import Contract, Identifier, ModelName, Sha256Hex, Version
from protocol.shadow import DesiredShadow

MAX_PAYLOAD_BYTES = 256 * 1024


class _OmitsNewKeys(Contract):
    """Keys added to wire version 1 after it shipped are left out while empty, so a receiver from before them
    (which forbids unknown keys) still takes what a newer sender says when the new feature is not used."""

    _new_keys: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_empty_new_keys(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in self._new_keys:
            if data.get(key) in (None, []):
                data.pop(key, None)
        return data


class DesiredModel(Contract):
    """One model the device should run, and the TUF target that names its manifest."""

    name: ModelName
    version: Version
    # TUF target path of the manifest: see protocol.http.manifest_target().
    manifest_target: Annotated[str, Field(min_length=1, max_length=512)]
    # An explicit rollback: the agent may install a version older than the one it runs.
    rollback: bool = False
    rollout_id: Identifier | None = None


class DesiredPipeline(Contract):
    """One pipeline version the device should run: its stage set activates together (protocol/pipeline.py)."""

    name: ModelName
    version: Version
    # TUF target path of the pipeline manifest for this device's profile: protocol.pipeline.pipeline_target().
    pipeline_target: Annotated[str, Field(min_length=1, max_length=512)]
    rollback: bool = False
    rollout_id: Identifier | None = None


class DesiredState(_OmitsNewKeys):
    """Hub -> device, retained QoS 1 on `.../desired`. `generation` only ever grows per device."""

    schema_version: Literal[1] = 1
    device_id: Identifier
    generation: Annotated[int, Field(ge=0)]
    models: list[DesiredModel] = Field(default_factory=list)
    pipelines: list[DesiredPipeline] = Field(default_factory=list)
    # Candidates to shadow-test beside the serving version, never serving them (protocol/shadow.py).
    shadows: list[DesiredShadow] = Field(default_factory=list)
    issued_at: datetime

    _new_keys = ("pipelines", "shadows")


class LifecycleState(StrEnum):
    """The agent's per-model update lifecycle (persisted; see agent/lifecycle.py)."""

    IDLE = "idle"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGED = "staged"
    ACTIVATING = "activating"
    SELF_TEST = "self_test"
    PROBATION = "probation"
    COMMITTED = "committed"
    FAILED = "failed"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"


class ReportedModel(Contract):
    """What the device runs for one model, and where its update stands."""

    name: ModelName
    active_version: Version | None = None
    previous_version: Version | None = None
    target_version: Version | None = None
    state: LifecycleState = LifecycleState.IDLE
    reason: str | None = None
    # When the active version started serving (for the hub's probation window).
    serving_since: datetime | None = None
    self_test_passed: bool | None = None


class ReportedState(_OmitsNewKeys):
    """Device -> hub, retained QoS 1 on `.../reported`."""

    schema_version: Literal[1] = 1
    device_id: Identifier
    profile: Identifier
    applied_generation: Annotated[int, Field(ge=0)] = 0
    models: list[ReportedModel] = Field(default_factory=list)
    # Pipelines as units (name = the pipeline's, versions its own): where each one's stage-set update stands.
    pipelines: list[ReportedModel] = Field(default_factory=list)
    agent_version: str
    reported_at: datetime

    _new_keys = ("pipelines",)


class EventKind(StrEnum):
    """Lifecycle and operational events a device reports."""

    DOWNLOAD_STARTED = "download_started"
    DOWNLOAD_RESUMED = "download_resumed"
    DOWNLOADED = "downloaded"
    VERIFIED = "verified"
    REFUSED = "refused"  # verification refused an artifact; the running model keeps serving
    STAGED = "staged"
    ACTIVATED = "activated"
    SELF_TEST_PASSED = "self_test_passed"
    SELF_TEST_FAILED = "self_test_failed"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    UNINSTALLED = "uninstalled"  # the model left the desired state: no longer served, its files deleted
    MESSAGE_REJECTED = "message_rejected"  # a malformed desired state or command
    HEALTH = "health"  # periodic model-health snapshot (telemetry issue)
    # A shadow window: `details` is a protocol.shadow.ShadowSummary; `version` the candidate's; also sent with
    # `reason` alone when the device cannot shadow the candidate (download, verification or load failed).
    SHADOW = "shadow"


class Event(_OmitsNewKeys):
    """Device -> hub, QoS 1 on `.../events`. `seq` grows per device so the hub drops duplicates."""

    schema_version: Literal[1] = 1
    device_id: Identifier
    seq: Annotated[int, Field(ge=0)]
    kind: EventKind
    ts: datetime
    model: ModelName | None = None
    pipeline: ModelName | None = None  # set instead of `model` for a pipeline's lifecycle events
    version: Version | None = None
    state: LifecycleState | None = None
    reason: str | None = None
    rollout_id: Identifier | None = None
    details: dict[str, Any] = Field(default_factory=dict)

    _new_keys = ("pipeline",)


class CommandKind(StrEnum):
    ROLLBACK = "rollback"
    FLUSH_TELEMETRY = "flush_telemetry"
    REPORT_STATE = "report_state"


class Command(Contract):
    """Hub -> device, QoS 1 on `.../cmd` (not retained): the exception, not the rule."""

    schema_version: Literal[1] = 1
    command_id: Identifier
    kind: CommandKind
    model: ModelName | None = None
    issued_at: datetime


class DeviceStatus(Contract):
    """Device -> hub, retained on `.../status`; the broker publishes `offline` as the last will."""

    status: Literal["online", "offline"]
    ts: datetime | None = None


class Ack(Contract):
    """Hub -> device on `.../ack`: these outbox ids (telemetry or events) are stored."""

    channel: Literal["telemetry", "events"]
    ids: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)


class TargetFile(Contract):
    """A file the hub publishes as a TUF target (for listings; the signed metadata is authoritative)."""

    path: str
    sha256: Sha256Hex
    length: int
