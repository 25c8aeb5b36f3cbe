"""First-start enrollment: trade the operator's token for an identity, kept in a 0600 file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from agent import AGENT_VERSION
from agent.errors import ConfigError, EnrollmentError
from agent.fsutil import atomic_write
from agent.settings import AgentSettings, tls_verify
from protocol.http import ENROLL_PATH, EnrollRequest, EnrollResponse

if TYPE_CHECKING:
    import httpx

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
    """Load the identity, enrolling with the hub first if there is none."""
    identity = load_identity(settings)
    if identity is not None:
        return identity
    if not settings.hub_url or not settings.enrollment_token:
        raise ConfigError("not enrolled: set hub_url and enrollment_token for the first start")
    request = EnrollRequest(
        enrollment_token=settings.enrollment_token,
        profile=settings.profile,
        device_id=settings.device_id,
        tags=settings.tags,
        agent_version=AGENT_VERSION,
    )
    import httpx  # first start only: the steady-state daemon does not load it

    own = client is None
    timeout = httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s)
    http = client or httpx.Client(timeout=timeout, verify=tls_verify(settings.hub_ca_file))
    try:
        response = http.post(
            settings.hub_url.rstrip("/") + ENROLL_PATH,
            content=request.to_bytes(),
            headers={"Content-Type": "application/json"},
        )
    except httpx.HTTPError as e:
        raise EnrollmentError(f"cannot reach the hub at {settings.hub_url}: {e}") from e
    finally:
        if own:
            http.close()
    if response.status_code not in (200, 201):  # the hub answers 201 Created
        raise EnrollmentError(f"enrollment refused: HTTP {response.status_code}: {response.text[:200]}")
    try:
        identity = EnrollResponse.model_validate_json(response.content)
    except ValidationError as e:
        raise EnrollmentError(f"the hub sent an invalid enrollment response: {e}") from e
    save_identity(settings, identity)
    return identity
