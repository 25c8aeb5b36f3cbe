"""Agent settings: one pydantic-settings class, from `EDGEFLEET_AGENT_*` env vars and a TOML file."""

from __future__ import annotations

import ipaddress
import re
import ssl
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FilePath, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from agent.errors import ConfigError
from agent.fallback.config import EndpointConfig, FallbackPolicy
from protocol.topics import ROOT

MODEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")  # protocol.base.ModelName


class TelemetrySettings(BaseModel):
    """The `[telemetry]` table: window closing and the outbox's caps and policy (docs/agent.md)."""

    model_config = ConfigDict(extra="forbid")

    window_size: int = Field(default=1000, ge=1)  # close a window after this many inferences...
    window_s: float = Field(default=60.0, gt=0)  # ...or this many seconds, whichever comes first
    outbox_max_bytes: int = Field(default=50 * 2**20, ge=4096)
    outbox_max_age_s: float = Field(default=7 * 86400, gt=0)
    policy: Literal["drop_oldest", "refuse_newest"] = "drop_oldest"
    # Lifecycle events wait in their own outbox (events.sqlite): telemetry never pushes them out.
    events_max_bytes: int = Field(default=5 * 2**20, ge=4096)
    max_inflight: int = Field(default=100, ge=1, le=10_000)  # unacknowledged messages on the wire
    ack_timeout_s: float = Field(default=30.0, gt=0)  # resend from the oldest unacked row after this
    tick_s: float = Field(default=1.0, gt=0, le=60)  # how often windows and acks are looked at


class AgentSettings(BaseSettings):
    """Everything the daemon needs; env vars override the TOML file."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_AGENT_", extra="forbid", env_nested_delimiter="__")

    profile: str = Field(description="firmware profile name, e.g. raspberry_pi_4")
    data_dir: Path = Path("/var/lib/edgefleet-agent")
    profiles_dir: Path | None = None
    # Enrollment (first start only; the identity is then kept in data_dir/identity.json, 0600).
    hub_url: str | None = None
    # The CA bundle (PEM) that signed the hub's HTTPS certificate; default: the system's trusted CAs.
    hub_ca_file: FilePath | None = None
    enrollment_token: str | None = None
    device_id: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    # MQTT (host, port and TLS default to what enrollment returned).
    mqtt_host: str | None = None
    mqtt_port: int | None = None
    mqtt_tls: bool | None = None
    # The CA bundle (PEM) that signed the broker's certificate; default: the system's trusted CAs.
    mqtt_ca_file: FilePath | None = None
    topic_root: str = ROOT
    keepalive_s: int = Field(default=30, ge=5)
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=60.0, gt=0)
    # Downloads.
    bandwidth_bps: int | None = Field(default=None, ge=1024)
    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=30.0, gt=0)
    retry_attempts: int = Field(default=8, ge=1)
    retry_base_s: float = Field(default=0.5, ge=0)
    retry_max_s: float = Field(default=60.0, gt=0)
    # A request to the hub that keeps failing fails the update only after `retry_attempts` tries AND this long.
    retry_window_s: float = Field(default=900.0, ge=0)
    retry_failed_after_s: float = Field(default=60.0, gt=0)
    # Activation.
    probation_s: float = Field(default=10.0, ge=0)
    latency_basis: Literal["host", "device"] = "host"
    # Local API.
    api_enabled: bool = True
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8470, ge=0, le=65535)
    api_uds: Path | None = None  # serve on this unix socket instead of api_host:api_port
    api_allow_remote: bool = False  # an api_host beyond loopback exposes predict and rollback (no auth): opt in
    log_level: str = "INFO"
    # Telemetry and cloud fallback (per model: `[fallback.NAME]`, `[fallback_policy.NAME]`; docs/fallback.md).
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    fallback: dict[str, EndpointConfig] = Field(default_factory=dict)
    fallback_policy: dict[str, FallbackPolicy] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _api_stays_local(self) -> AgentSettings:
        if not self.api_enabled or self.api_uds is not None or self.api_allow_remote:
            return self
        try:
            local = self.api_host == "localhost" or ipaddress.ip_address(self.api_host).is_loopback
        except ValueError:
            local = False
        if not local:
            raise ValueError(
                f"api_host = {self.api_host!r} would expose the local API (predict, rollback; no auth) beyond "
                "this device: use a loopback address or api_uds, or set api_allow_remote = true to mean it"
            )
        return self

    @model_validator(mode="after")
    def _fallback_names(self) -> AgentSettings:
        for table in ("fallback", "fallback_policy"):
            for name in getattr(self, table):
                if not MODEL_NAME_RE.match(name):
                    raise ValueError(f"[{table}.{name}]: {name!r} is not a valid model name")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 - no .env files on devices
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = settings_cls.model_config.get("toml_file")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml:
            sources.append(TomlConfigSettingsSource(settings_cls))
        return tuple(sources)


def load_settings(config: Path | None = None, **overrides: Any) -> AgentSettings:
    """Settings from `config` (TOML) under env vars and explicit overrides."""
    where = str(config) if config is not None else "settings (EDGEFLEET_AGENT_*)"
    try:
        if config is None:
            return AgentSettings(**overrides)
        if not config.is_file():
            raise FileNotFoundError(f"config file {config} does not exist")
        model_config = {**AgentSettings.model_config, "toml_file": config}
        bound = type("AgentSettingsFromFile", (AgentSettings,), {"model_config": model_config})
        settings: AgentSettings = bound(**overrides)
        return settings
    except ValidationError as e:
        raise ConfigError(f"{where}: {_first_error(e)}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: not valid TOML: {e}") from e


def _first_error(e: ValidationError) -> str:
    """`key.sub: what is wrong` for the first problem, and how many more there are (one readable line)."""
    errors = e.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {message}{more}" if where else f"{message}{more}"


def tls_verify(ca_file: Path | None) -> ssl.SSLContext | bool:
    """httpx's `verify` for the hub: a context trusting `ca_file`, or True (the system's trusted CAs)."""
    return ssl.create_default_context(cafile=str(ca_file)) if ca_file else True
