"""HTTP contract between agent and hub: paths, enrollment payloads, TUF target naming."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from protocol.base import Contract, Identifier, ModelName, Version

API_PREFIX = "/api/v1"
ENROLL_PATH = f"{API_PREFIX}/enroll"
# TUF repository served by the hub (consistent snapshots): N.root.json, timestamp.json,
# V.snapshot.json, V.targets.json under METADATA; targets as <dir>/<sha256>.<name> under TARGETS.
TUF_METADATA_PATH = "/tuf/metadata/"
TUF_TARGETS_PATH = "/tuf/targets/"
# Device routes authenticate with `Authorization: Bearer <device_token>`; so do /tuf/ downloads.


def manifest_target(name: str, version: int, profile: str) -> str:
    """TUF target path of a manifest: `models/{name}/{version}/{profile}/manifest.json`."""
    return f"models/{name}/{version}/{profile}/manifest.json"


def artifact_target(name: str, version: int, profile: str, file: str) -> str:
    """TUF target path of an artifact, beside its manifest."""
    return f"models/{name}/{version}/{profile}/{file}"


PATCH_ALGORITHM = "zstd"  # the patch target's suffix; another format would be another suffix, side by side


def patch_target(artifact: str, from_version: int) -> str:
    """TUF target path of the patch that rebuilds artifact target `artifact` from version `from_version`:
    `models/{name}/{version}/{profile}/{file}.from-{from_version}.zstd` (hub/deltas.py makes it, agent/delta.py
    applies it)."""
    return f"{artifact}.from-{from_version}.{PATCH_ALGORITHM}"


class EnrollRequest(Contract):
    """Device -> hub: exchange an operator-issued token for an identity."""

    enrollment_token: Annotated[str, Field(min_length=8, max_length=512)]
    profile: Identifier
    device_id: Identifier | None = None  # requested id; the hub may assign one
    tags: dict[str, str] = Field(default_factory=dict)
    agent_version: str = "unknown"


class MqttCredentials(Contract):
    host: str
    port: Annotated[int, Field(ge=1, le=65535)]
    username: str
    password: str
    tls: bool = False


class EnrollResponse(Contract):
    """Hub -> device: identity, credentials and the trusted TUF root (trust on first use)."""

    device_id: Identifier
    device_token: str
    mqtt: MqttCredentials
    hub_url: str
    tuf_root: str  # the current root.json, as served; pin it, later roots come through TUF


class ModelVersionRef(Contract):
    name: ModelName
    version: Version
    profile: Identifier
