"""Fallback configuration: one endpoint per model, and when to use it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

ProtocolName = Literal["tfserving", "torchserve", "kserve"]


class EndpointConfig(BaseModel):
    """Where the cloud copy of a model is served, and how hard to try."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ProtocolName
    url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")]
    model: Annotated[str, Field(min_length=1, max_length=128)]
    version: Annotated[int, Field(ge=1)] | None = None
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 2.0
    connect_timeout_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    retries: Annotated[int, Field(ge=0, le=5)] = 1
    backoff_s: Annotated[float, Field(ge=0, le=10)] = 0.05
    # Sent as `{auth_header}: {auth_scheme} {token}` (e.g. Authorization: Bearer ...).
    auth_token: SecretStr | None = None
    auth_header: str = "Authorization"
    auth_scheme: str = "Bearer"
    verify_tls: bool = True
    ca_file: Path | None = None
    breaker_failures: Annotated[int, Field(ge=1, le=100)] = 3
    breaker_reset_s: Annotated[float, Field(gt=0, le=3600)] = 10.0


class FallbackPolicy(BaseModel):
    """When the agent asks the cloud instead of (or after) the device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    on_no_model: bool = True  # nothing installed yet (still downloading)
    on_runtime_error: bool = True  # the local runtime raised
    on_self_test_failed: bool = True  # self-test failed and there is no previous model
    on_data_quality: bool = True  # inputs rejected by data-quality checks (NaN/inf, out of range)
    # Classifiers: ask the cloud when the local top-1 probability is below this.
    min_confidence: Annotated[float, Field(gt=0, lt=1)] | None = None
