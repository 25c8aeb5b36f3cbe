"""Agent settings: one pydantic-settings class, from `EDGEFLEET_AGENT_*` env vars and a TOML file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from protocol.topics import ROOT


class AgentSettings(BaseSettings):
    """Everything the daemon needs; env vars override the TOML file."""

    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_AGENT_", extra="forbid", env_nested_delimiter="__")

    profile: str = Field(description="firmware profile name, e.g. raspberry_pi_4")
    data_dir: Path = Path("/var/lib/edgefleet-agent")
    profiles_dir: Path | None = None
    # Enrollment (first start only; the identity is then kept in data_dir/identity.json, 0600).
    hub_url: str | None = None
    enrollment_token: str | None = None
    device_id: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    # MQTT (host/port default to what enrollment returned).
    mqtt_host: str | None = None
    mqtt_port: int | None = None
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
    retry_failed_after_s: float = Field(default=60.0, gt=0)
    # Activation.
    probation_s: float = Field(default=10.0, ge=0)
    latency_basis: Literal["host", "device"] = "host"
    # Local API.
    api_enabled: bool = True
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8470, ge=0, le=65535)
    api_uds: Path | None = None  # serve on this unix socket instead of api_host:api_port
    log_level: str = "INFO"

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
    if config is None:
        return AgentSettings(**overrides)
    if not config.is_file():
        raise FileNotFoundError(f"config file {config} does not exist")
    bound = type(
        "AgentSettingsFromFile", (AgentSettings,), {"model_config": {**AgentSettings.model_config, "toml_file": config}}
    )
    settings: AgentSettings = bound(**overrides)
    return settings
