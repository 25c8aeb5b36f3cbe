"""Device enrollment: an operator-issued token in, an identity and credentials out."""

from __future__ import annotations

import logging
import secrets

from fastapi import APIRouter

from hub.api.deps import HubDep
from hub.errors import HubError, InvalidInput
from hub.schemas import Message
from hub.security import mosquitto_hash, new_password, new_token, sha256_hex
from hub.store import audit
from hub.store import devices as device_store
from protocol.http import ENROLL_PATH, EnrollRequest, EnrollResponse, MqttCredentials

log = logging.getLogger(__name__)
router = APIRouter(tags=["enrollment"])
RESERVED_ID_PREFIX = "edgefleet"  # the hub's broker account is `edgefleet-hub`; replicas and tools get others


@router.post(
    ENROLL_PATH,
    response_model=EnrollResponse,
    status_code=201,
    responses={401: {"model": Message}, 409: {"model": Message}, 422: {"model": Message}},
)
def enroll(body: EnrollRequest, hub: HubDep) -> EnrollResponse:
    """Exchange an enrollment token for a device id, a device bearer token, MQTT credentials and the TUF root."""
    now = hub.clock()
    if body.device_id is not None and body.device_id.lower().startswith(RESERVED_ID_PREFIX):
        raise InvalidInput(f"device_id: ids starting with {RESERVED_ID_PREFIX!r} are reserved for the hub's own "
                           "broker accounts; choose another")  # fmt: skip
    device_id = body.device_id or f"dev-{secrets.token_hex(6)}"
    device_token, mqtt_password = new_token("efd"), new_password()
    accounts = hub.dynsec  # dynsec: accounts live in the broker; else files (sync_broker_auth)
    account_made = False
    try:
        with hub.engine.begin() as conn:
            token = device_store.consume_enrollment_token(
                conn=conn, now=now, token_sha256=sha256_hex(body.enrollment_token)
            )
            tags = {**token["tags"], **body.tags}
            device_store.create_device(
                conn=conn, now=now, device_id=device_id, profile=body.profile, group=token["group_name"], tags=tags,
                token_sha256=sha256_hex(device_token), mqtt_password_hash=mosquitto_hash(mqtt_password),
                agent_version=body.agent_version,
            )  # fmt: skip
            audit.record(conn=conn, now=now, actor=f"device:{device_id}", action="device.enroll", target=device_id,
                         details={"token_id": token["id"], "profile": body.profile})  # fmt: skip
            hub.sync_broker_auth(conn)
            if accounts is not None:  # live before the commit; if the broker refuses, the token is not used up
                accounts.add_device(device_id, mqtt_password)
                account_made = True
    except Exception:
        if accounts is not None and account_made:  # the commit failed: take back the account nobody got
            try:
                accounts.remove_device(device_id)
            except HubError as e:
                log.warning("enrollment of %s failed after its broker account was made; removing it: %s", device_id, e)
        raise
    hub.sync_broker_auth()  # committed view: no concurrent enrollment's account is lost
    hub.rollouts.adopt_device(device_id)
    s = hub.settings
    return EnrollResponse(
        device_id=device_id,
        device_token=device_token,
        mqtt=MqttCredentials(
            host=s.mqtt_public_host or s.mqtt_host,
            port=s.mqtt_public_port or s.mqtt_port,
            username=device_id,
            password=mqtt_password,
            tls=s.mqtt_public_tls,
        ),
        hub_url=s.public_url.rstrip("/"),
        tuf_root=hub.repo.root_bytes().decode("utf-8"),
    )
