"""First-start enrollment: trade the operator's token for an identity, kept in a 0600 file."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from agent import AGENT_VERSION
from agent.errors import ConfigError, EnrollmentError
from agent.fsutil import atomic_write
from agent.settings import AgentSettings, check_hub_url
from agent.tls import hub_context, hub_failure
from protocol.http import ENROLL_PATH, EnrollRequest, EnrollResponse

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)
IDENTITY_FILE = "identity.json"


def identity_path(settings: AgentSettings) -> Path:
    return settings.data_dir / IDENTITY_FILE


def load_identity(settings: AgentSettings) -> EnrollResponse | None:
    """The persisted identity, or None before enrollment."""
    path = identity_path(settings)
    if not path.exists():
        return None
    try:
        return EnrollResponse.from_json(path.read_bytes())
    except (OSError, ValidationError) as e:
        raise ConfigError(f"{path}: unreadable identity ({e}); remove it to enroll again") from e


def save_identity(settings: AgentSettings, identity: EnrollResponse) -> None:
    """Write the identity and credentials with mode 0600."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(identity_path(settings), identity.to_bytes(), mode=0o600)


def ensure_identity(settings: AgentSettings, client: httpx.Client | None = None) -> EnrollResponse:
    """Load the identity, enrolling with the hub first if there is none; refuse an http:// hub in it unless
    `allow_insecure_http`, and say once (here, at start) when traffic to the hub is not encrypted."""
    identity = load_identity(settings)
    used = [identity.hub_url] if identity is not None else []
    if identity is None:
        identity = _enroll(settings, client)
        used = [settings.hub_url or "", identity.hub_url]
    try:
        check_hub_url(identity.hub_url, allow_insecure_http=settings.allow_insecure_http, name="hub_url")
    except ValueError as e:
        raise ConfigError(f"{identity_path(settings)} (from enrollment, the hub's public_url): {e}") from e
    insecure = sorted({url for url in used if url.lower().startswith("http://")})
    if insecure:
        log.warning("traffic to the hub at %s is not encrypted (allow_insecure_http = true): the device token and "
                    "the updates can be read and changed on the network", " and ".join(insecure))  # fmt: skip
    return identity


def _enroll(settings: AgentSettings, client: httpx.Client | None) -> EnrollResponse:
    """Trade the enrollment token for an identity and keep it (0600)."""
    if not settings.hub_url or not settings.enrollment_token:
        raise ConfigError("not enrolled: set hub_url and enrollment_token for the first start")
    try:
        request = EnrollRequest(
            enrollment_token=settings.enrollment_token,
            profile=settings.profile,
            device_id=settings.device_id,
            tags=settings.tags,
            agent_version=AGENT_VERSION,
        )
    except ValidationError as e:  # the settings passed their own checks; the wire contract is stricter
        first = e.errors(include_url=False)[0]
        key = ".".join(str(p) for p in first["loc"])
        hint = " (the token `edgefleet devices enroll-token` printed)" if key == "enrollment_token" else ""
        raise ConfigError(f"{key}: {first['msg']}{hint}") from e
    import httpx  # first start only: the steady-state daemon does not load it

    own = client is None
    timeout = httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s)
    http = client or httpx.Client(timeout=timeout, verify=hub_context(settings))
    try:
        response = http.post(
            settings.hub_url.rstrip("/") + ENROLL_PATH,
            content=request.to_bytes(),
            headers={"Content-Type": "application/json"},
        )
    except httpx.HTTPError as e:
        reason = hub_failure(e, settings, settings.hub_url) or str(e) or type(e).__name__
        raise EnrollmentError(f"cannot reach the hub at {settings.hub_url}: {reason}") from e
    finally:
        if own:
            http.close()
    if response.status_code not in (200, 201):  # the hub answers 201 Created
        raise EnrollmentError(f"enrollment refused: HTTP {response.status_code}: {response.text[:200]}")
    try:
        identity = EnrollResponse.model_validate_json(response.content)
    except ValidationError as e:
        raise EnrollmentError(f"the hub sent an invalid enrollment response: {e}") from e
    save_identity(settings, identity)  # kept even if its hub_url is refused next: the token is spent
    return identity
