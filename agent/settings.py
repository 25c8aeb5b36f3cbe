"""Agent settings: one pydantic class, from a TOML file under `EDGEFLEET_AGENT_*` env vars.

Why not pydantic-settings (the hub's settings library): importing it brings asyncio, argparse and
python-dotenv into the daemon, which nothing else there needs — 3.1 MB of the daemon's resident memory on
a device (bench/agent_overhead.py), for what `environment_values` and `load_settings` do here with the same
conventions: `EDGEFLEET_AGENT_<KEY>`, case-insensitive, `__` into tables, JSON for a table or list given
whole, env over the file, and explicit values over both.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import ssl
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FilePath, ValidationError, model_validator

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


class ShadowSettings(BaseModel):
    """The `[shadow]` table: how a candidate under shadow evaluation runs beside the serving version (docs/agent.md)."""

    model_config = ConfigDict(extra="forbid")

    queue_size: int = Field(default=64, ge=1, le=100_000)  # sampled requests waiting; past this they are dropped
    cpu_budget: float = Field(default=0.25, gt=0, le=1.0)  # share of one core the shadow worker may keep busy
    window_s: float = Field(default=60.0, gt=0)  # send a shadow window after this many seconds...
    window_samples: int = Field(default=1000, ge=1)  # ...or this many compared rows, whichever comes first


ENV_PREFIX = "EDGEFLEET_AGENT_"
ENV_NESTED = "__"


class AgentSettings(BaseModel):
    """Everything the daemon needs (`load_settings`: a TOML file under `EDGEFLEET_AGENT_*` env vars)."""

    model_config = ConfigDict(extra="forbid")

    profile: str = Field(description="firmware profile name, e.g. raspberry_pi_4")
    data_dir: Path = Path("/var/lib/edgefleet-agent")
    profiles_dir: Path | None = None
    # Enrollment (first start only; the identity is then kept in data_dir/identity.json, 0600).
    hub_url: str | None = None
    # The CA bundle (PEM) that signed the hub's HTTPS certificate; default: the system's trusted CAs.
    hub_ca_file: FilePath | None = None
    # An http:// hub (here or in the identity enrollment returned) is refused unless this says it is meant.
    allow_insecure_http: bool = False
    # The device's certificate and key (PEM, both or neither), shown to the hub's HTTPS and the broker's TLS
    # listener when they ask for one (mTLS).
    client_cert_file: FilePath | None = None
    client_key_file: FilePath | None = None
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
    # Fetch a signed patch against the active or previous version when the hub offers one (docs/updates.md).
    delta_updates: bool = True
    # Activation.
    probation_s: float = Field(default=10.0, ge=0)
    latency_basis: Literal["host", "device"] = "host"
    # Local API.
    api_enabled: bool = True
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8470, ge=0, le=65535)
    api_uds: Path | None = None  # serve on this unix socket instead of api_host:api_port
    api_allow_remote: bool = False  # an api_host beyond loopback exposes predict and rollback (no auth): opt in
    # Local API limits (agent/httplimits.py): open connections, per TCP peer address, and the time a whole
    # request (head and body) may take to arrive; a keep-alive connection idle this long is closed.
    api_max_connections: int = Field(default=64, ge=1, le=10_000)
    api_max_per_peer: int = Field(default=16, ge=1, le=10_000)
    api_request_deadline_s: float = Field(default=15.0, gt=0)
    api_idle_timeout_s: float = Field(default=30.0, gt=0)
    log_level: str = "INFO"
    # Telemetry and cloud fallback (per model: `[fallback.NAME]`, `[fallback_policy.NAME]`; docs/fallback.md).
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)
    # Shadow evaluation of candidates the hub names in the desired state (`DesiredState.shadows`).
    shadow: ShadowSettings = Field(default_factory=ShadowSettings)
    fallback: dict[str, EndpointConfig] = Field(default_factory=dict)
    fallback_policy: dict[str, FallbackPolicy] = Field(default_factory=dict)
    # Per pipeline (`[pipeline_fallback.NAME]`): an endpoint serving the whole pipeline as one model (a Triton
    # ensemble, a KServe inference graph...), asked when the pipeline does not serve on the device (docs/pipelines.md).
    pipeline_fallback: dict[str, EndpointConfig] = Field(default_factory=dict)
    pipeline_fallback_policy: dict[str, FallbackPolicy] = Field(default_factory=dict)

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
    def _hub_url_encrypted(self) -> AgentSettings:
        if self.hub_url is not None:
            check_hub_url(self.hub_url, allow_insecure_http=self.allow_insecure_http, name="hub_url")
        return self

    @model_validator(mode="after")
    def _tls_files_load(self) -> AgentSettings:
        """A CA bundle or a device certificate that cannot be used stops the start, not the first connection."""
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError("client_cert_file and client_key_file go together: set both (the device's certificate "
                             "and its private key) or neither")  # fmt: skip
        for name in ("hub_ca_file", "mqtt_ca_file"):
            ca_file = getattr(self, name)
            if ca_file is not None:
                try:
                    ssl.create_default_context(cafile=str(ca_file))
                except ssl.SSLError as e:
                    raise ValueError(f"{name}: {ca_file} holds no usable PEM certificate ({e.reason})") from e
        if self.client_cert_file is not None and self.client_key_file is not None:
            try:  # an empty password: an encrypted key is refused here, never prompted for on a terminal
                ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
                    self.client_cert_file, self.client_key_file, password=b""
                )
            except ssl.SSLError as e:
                why = ("the key is not the certificate's" if e.reason == "KEY_VALUES_MISMATCH"
                       else "they must be a PEM certificate and its unencrypted PEM private key")  # fmt: skip
                raise ValueError(f"client_cert_file / client_key_file: cannot use {self.client_cert_file} with "
                                 f"{self.client_key_file}: {why}") from e  # fmt: skip
        return self

    @model_validator(mode="after")
    def _fallback_names(self) -> AgentSettings:
        for table in ("fallback", "fallback_policy", "pipeline_fallback", "pipeline_fallback_policy"):
            for name in getattr(self, table):
                if not MODEL_NAME_RE.match(name):
                    raise ValueError(f"[{table}.{name}]: {name!r} is not a valid model name")
        return self


def environment_values(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`EDGEFLEET_AGENT_*` variables as settings values: `..._TELEMETRY__WINDOW_S=15` -> telemetry.window_s.

    Names are case-insensitive. A table or list field (`tags`, `telemetry`, `fallback.NAME`) given whole
    takes JSON, and keys set inside it (`..._TAGS__SITE`) go on top; every other value stays a string that
    validation converts as it does the file's.
    """
    found = []
    for name, raw in (environ if environ is not None else os.environ).items():
        if name.upper().startswith(ENV_PREFIX) and len(name) > len(ENV_PREFIX):
            found.append((name[len(ENV_PREFIX) :].lower().split(ENV_NESTED), name, raw))
    values: dict[str, Any] = {}
    seen: set[tuple[str, ...]] = set()
    for path, name, raw in sorted(found):  # a whole table before the keys set inside it
        if not all(path):
            raise ConfigError(f"{name}: an empty key between {ENV_NESTED!r} separators")
        value: Any = raw
        if _takes_json(path):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{name}: this key takes a JSON value ({e})") from e
        table = values
        for i, key in enumerate(path[:-1]):
            inner = table.setdefault(key, {})
            if not isinstance(inner, dict):
                whole = ENV_PREFIX + ENV_NESTED.join(path[: i + 1]).upper()
                raise ConfigError(f"{name}: {whole} is set to a value that is not a table")
            table = inner
        if tuple(path) in seen:
            raise ConfigError(f"{name}: set twice (names are case-insensitive)")
        seen.add(tuple(path))
        table[path[-1]] = value
    return values


def _takes_json(path: list[str]) -> bool:
    """Whether the field at `path` is a table or a list (unknown keys are left to validation to name)."""
    annotation: Any = AgentSettings
    for key in path:
        annotation = _bare(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(key)
            if field is None:
                return False
            annotation = field.annotation
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return False
    return _is_table(_bare(annotation))


def _is_table(annotation: Any) -> bool:
    origin = typing.get_origin(annotation) or annotation
    return origin in (dict, list) or (isinstance(origin, type) and issubclass(origin, BaseModel))


def _bare(annotation: Any) -> Any:
    """The type under `Annotated[...]` and `... | None` (of a wider union, its table type if it has one)."""
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [_bare(a) for a in typing.get_args(annotation) if a is not type(None)]
        return next((a for a in args if _is_table(a)), args[0])
    return annotation


def _merge(under: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` on top of `under`, table by table."""
    merged = dict(under)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(
    config: Path | None = None, *, environ: Mapping[str, str] | None = None, **overrides: Any
) -> AgentSettings:
    """Settings from `config` (TOML) under `EDGEFLEET_AGENT_*` env vars (`environ`, default os.environ),
    under explicit `overrides`. Any problem is a ConfigError of one line naming the key or the variable."""
    where = str(config) if config is not None else "settings"
    file_values: dict[str, Any] = {}
    if config is not None:
        if not config.is_file():
            raise FileNotFoundError(f"config file {config} does not exist")
        try:
            with config.open("rb") as f:
                file_values = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{where}: not valid TOML: {e}") from e
    environ = os.environ if environ is None else environ
    try:
        return AgentSettings.model_validate(_merge(_merge(file_values, environment_values(environ)), overrides))
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        variable = _from_environment(first["loc"], {name.upper() for name in environ}, overrides)
        raise ConfigError(f"{variable or where}: {_first_error(e)}") from e


def _from_environment(loc: tuple[int | str, ...], names: set[str], overrides: Mapping[str, Any]) -> str | None:
    """The env var that set the value at `loc` (or a table holding it), unless an explicit override did."""
    if not loc or loc[0] in overrides:
        return None
    for depth in range(len(loc), 0, -1):
        name = ENV_PREFIX + ENV_NESTED.join(str(k) for k in loc[:depth]).upper()
        if name in names:
            return name
    return None


def _first_error(e: ValidationError) -> str:
    """`key.sub: what is wrong` for the first problem, and how many more there are (one readable line)."""
    errors = e.errors(include_url=False)
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {message}{more}" if where else f"{message}{more}"


def check_hub_url(url: str, *, allow_insecure_http: bool, name: str) -> None:
    """Refuse a hub URL that is not https:// (an http:// one only with `allow_insecure_http`): a ValueError."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "https" or (scheme == "http" and allow_insecure_http):
        return
    if scheme == "http":
        raise ValueError(f'{name} = "{url}" is plain HTTP: the device token and the updates would cross the '
                         "network unencrypted; use https:// or set allow_insecure_http = true to mean it")  # fmt: skip
    raise ValueError(f'{name} = "{url}" is not an https:// URL')
