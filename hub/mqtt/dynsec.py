"""Device broker accounts in Mosquitto's dynamic-security plugin, administered over MQTT.

The accounts live in the broker, so whichever hub replica enrolls or removes a device changes them, and
the broker may run on another host. The plugin does not substitute `%u` in role ACLs, so every device
gets its own role `edgefleet-device-<id>` granting exactly what `render_acl` grants with the files
backend: publish, receive and subscribe under `<root>/devices/<id>/#`, nothing else. Unlike the ACL
file, the plugin refuses a foreign subscription at SUBACK (135), and changes apply at once: deleting a
client disconnects its sessions.

Mosquitto 2.0.11 behaviour this module works around (seen against the real broker):
- deleting a role a client still holds corrupts that client's role list: a client goes before its role;
- adding a role to a client disconnects every session of that client (the hub's own ones too), and paho
  re-sends the unacknowledged command on reconnect, whose answer is then an error ("Internal error"):
  that one change to the hub's account is checked afterwards instead of trusted from its answer;
- `modifyRole` replaces a role's ACLs at once without disconnecting anyone.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from hub.errors import BrokerConfigError, Conflict, InvalidInput
from hub.mqtt.auth import HUB_USERNAME

log = logging.getLogger(__name__)

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
HUB_ROLE = HUB_USERNAME
DEVICE_ROLE_PREFIX = "edgefleet-device-"
RESERVED_PREFIX = "edgefleet"  # the hub's own accounts and roles; never a device
_DEVICE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # protocol.base.Identifier: no `/`, `+`, `#`
_RW = ("publishClientSend", "publishClientReceive", "subscribePattern")
_EXISTS, _NOT_FOUND = "already exists", "not found"  # the plugin's error texts ("Client already exists", ...)


class DynsecError(BrokerConfigError):
    """The broker refused a dynamic-security command, or did not answer in time (it may still apply it)."""


def device_role(device_id: str) -> str:
    """The device's own role (the plugin has no `%u`)."""
    if not _DEVICE_ID.match(device_id) or device_id.lower().startswith(RESERVED_PREFIX):
        raise InvalidInput(f"{device_id!r} cannot be a device's broker account")
    return f"{DEVICE_ROLE_PREFIX}{device_id}"


def device_acls(topic_root: str, device_id: str) -> list[dict[str, Any]]:
    """What `pattern readwrite <root>/devices/%u/#` grants one device."""
    return [_allow(t, f"{topic_root}/devices/{device_id}/#") for t in _RW]


def hub_acls(topic_root: str) -> list[dict[str, Any]]:
    """`topic readwrite <root>/#` as today, shared subscriptions to it, and the dynamic-security admin topics."""
    tree, control = f"{topic_root}/#", "$CONTROL/dynamic-security/#"
    return [*(_allow(t, tree) for t in _RW), _allow("subscribePattern", f"$share/+/{tree}"),
            *(_allow(t, control) for t in _RW)]  # fmt: skip


def initial_config(
    *, hub_password_hash: str, topic_root: str, device_hashes: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The broker's first dynamic-security file (`plugin_opt_config_file`).

    The hub's account with its role, default deny; and, when moving from the files backend, every enrolled
    device with the `$7$` hash the hub already stores (the plugin keeps the same pbkdf2-sha512 salt, hash
    and iterations), so devices keep their passwords. Hashes come from `hub.security.mosquitto_hash`.
    """
    devices = dict(device_hashes or {})
    clients = [_client_entry(HUB_USERNAME, hub_password_hash, HUB_ROLE)]
    roles = [{"rolename": HUB_ROLE, "acls": hub_acls(topic_root)}]
    for device_id, pw_hash in sorted(devices.items()):
        role = device_role(device_id)
        clients.append(_client_entry(device_id, pw_hash, role))
        roles.append({"rolename": role, "acls": device_acls(topic_root, device_id)})
    deny = {"publishClientSend": False, "publishClientReceive": False, "subscribe": False, "unsubscribe": True}
    return {"defaultACLAccess": deny, "clients": clients, "groups": [], "roles": roles}


@dataclass
class _Waiter:
    done: threading.Event = field(default_factory=threading.Event)
    responses: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    mid: int | None = None


class DynsecAccounts:
    """Per-device broker accounts in the broker itself, changed over MQTT with the hub's own account."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        password: str,
        topic_root: str,
        username: str = HUB_USERNAME,
        timeout_s: float = 5.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port, self.username = host, port, username
        self.topic_root = topic_root
        self.timeout_s = timeout_s
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"edgefleet-hub-dynsec-{secrets.token_hex(4)}",
            protocol=mqtt.MQTTv5,
        )  # fmt: skip
        self._client.username_pw_set(username, password)
        if tls is not None:
            self._client.tls_set_context(tls)
        self._client.reconnect_delay_set(min_delay=1, max_delay=5)
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._lock = threading.Lock()
        self._state = threading.Condition(self._lock)
        self._started = self._ready = False
        self._refusal: str | None = None  # the broker said no to our login or subscription
        self._sub_refused = False
        self._problem = "no connection yet"  # the last reason we are not connected, for the timeout's message
        self._pending: dict[str, _Waiter] = {}
        self._mids: dict[int, str] = {}
        self._refused_mids: dict[int, str] = {}

    # -- accounts ---------------------------------------------------------------------------------------

    def ensure_hub_roles(self) -> None:
        """Give the hub's account the `edgefleet-hub` role with today's rights; changes nothing when in place."""
        wanted = hub_acls(self.topic_root)
        role, client = self._request([{"command": "getRole", "rolename": HUB_ROLE},
                                      {"command": "getClient", "username": self.username}])  # fmt: skip
        if not _ok(role, f"getRole {HUB_ROLE}", tolerate=_NOT_FOUND):
            self._run({"command": "createRole", "rolename": HUB_ROLE, "acls": wanted})
        elif _acl_set(role["data"]["role"].get("acls", [])) != _acl_set(wanted):
            self._run({"command": "modifyRole", "rolename": HUB_ROLE, "acls": wanted})
        _ok(client, f"getClient {self.username}")
        if HUB_ROLE in _role_names(client["data"]["client"]):
            return
        # Disconnects every hub session and gets re-sent on reconnect (module docstring): check the outcome.
        try:
            self._run({"command": "addClientRole", "username": self.username, "rolename": HUB_ROLE})
        except DynsecError as e:
            log.info("%s (the re-sent command's answer, expected); checking the account", e)
        if HUB_ROLE not in _role_names(self._get_client(self.username) or {}):
            raise DynsecError(f"the broker did not give {self.username!r} the {HUB_ROLE!r} role")

    def add_device(self, device_id: str, password: str) -> None:
        """Create the device's role and account (or re-key its existing account); the login works at once."""
        role = device_role(device_id)
        made_role, made_client = self._request([
            {"command": "createRole", "rolename": role, "acls": device_acls(self.topic_root, device_id)},
            {"command": "createClient", "username": device_id, "password": password, "roles": [{"rolename": role}]},
        ])  # fmt: skip
        role_is_new = _ok(made_role, f"createRole {role}", tolerate=_EXISTS)
        if not role_is_new:  # left from an earlier attempt or another topic root: make its ACLs exact
            self._run({"command": "modifyRole", "rolename": role, "acls": device_acls(self.topic_root, device_id)})
        if _ok(made_client, f"createClient {device_id}", tolerate=_EXISTS):
            return
        existing = self._get_client(device_id)
        if existing is None or not _is_device_account(existing, role):
            if role_is_new:
                self._run({"command": "deleteRole", "rolename": role}, tolerate=_NOT_FOUND)
            raise Conflict(f"the broker already has an account {device_id!r} that is not this hub's device account; "
                           "choose another device id")  # fmt: skip
        self._run({"command": "setClientPassword", "username": device_id, "password": password})  # drops old sessions

    def remove_device(self, device_id: str) -> None:
        """Delete the device's account (the broker disconnects it at once), then its role; absent ones are fine."""
        role = device_role(device_id)
        existing = self._get_client(device_id)
        if existing is not None:
            if not _is_device_account(existing, role):
                raise Conflict(f"the broker's account {device_id!r} is not this hub's device account; left alone")
            self._run({"command": "deleteClient", "username": device_id})
        self._run({"command": "deleteRole", "rolename": role}, tolerate=_NOT_FOUND)

    def list_devices(self) -> list[str]:
        """Ids of the device accounts in the broker (accounts holding exactly their own device role)."""
        found: list[str] = []
        offset = 0
        while True:
            (page,) = self._run({"command": "listClients", "verbose": True, "count": 1000, "offset": offset})
            clients = page["data"]["clients"]
            found += [c["username"] for c in clients if _is_listed_device(c)]
            offset += len(clients)
            if not clients or offset >= page["data"]["totalCount"]:
                return sorted(found)

    def close(self) -> None:
        """Disconnect; pending requests time out."""
        self._client.disconnect()
        self._client.loop_stop()
        with self._state:
            self._started = self._ready = False

    # -- request / response -----------------------------------------------------------------------------

    def _get_client(self, username: str) -> dict[str, Any] | None:
        (got,) = self._request([{"command": "getClient", "username": username}])
        client: dict[str, Any] = got["data"]["client"] if _ok(got, f"getClient {username}", tolerate=_NOT_FOUND) else {}
        return client or None

    def _run(self, *commands: dict[str, Any], tolerate: str | None = None) -> list[dict[str, Any]]:
        responses = self._request(list(commands))
        for command, response in zip(commands, responses, strict=True):
            _ok(response, _describe(command), tolerate=tolerate)
        return responses

    def _request(self, commands: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Publish one batch and wait for its answers, matched by correlationData (replicas share the topic)."""
        deadline = time.monotonic() + self.timeout_s
        with self._lock:  # refused before: the broker's rights may have been fixed since, so ask once more
            retry, self._sub_refused = self._sub_refused, False
            if retry:
                self._refusal = None
        if retry:
            self._client.subscribe(RESPONSE_TOPIC, qos=1)
        self._connect(deadline)
        request_id = secrets.token_hex(8)
        waiter = _Waiter()
        with self._lock:
            self._pending[request_id] = waiter
        try:
            payload = json.dumps({"commands": [{**c, "correlationData": request_id} for c in commands]})
            info = self._client.publish(CONTROL_TOPIC, payload, qos=1)
            with self._lock:
                refused = self._refused_mids.pop(info.mid, None)
                if refused is not None:
                    waiter.error = refused
                    waiter.done.set()
                else:
                    waiter.mid = info.mid
                    self._mids[info.mid] = request_id
            what = ", ".join(_describe(c) for c in commands)
            if not waiter.done.wait(max(0.0, deadline - time.monotonic())):
                raise DynsecError(f"the broker at {self.host}:{self.port} did not answer {what} "
                                  f"within {self.timeout_s:g} s")  # fmt: skip
            if waiter.error is not None:
                raise DynsecError(waiter.error)
            if len(waiter.responses) != len(commands):
                raise DynsecError(f"the broker answered {len(waiter.responses)} of {len(commands)} commands ({what})")
            return waiter.responses
        finally:
            with self._lock:
                self._pending.pop(request_id, None)
                if waiter.mid is not None:
                    self._mids.pop(waiter.mid, None)

    def _connect(self, deadline: float) -> None:
        with self._state:
            if not self._started:
                self._client.connect_async(self.host, self.port, keepalive=30)
                self._client.loop_start()
                self._started = True
            while not self._ready:
                if self._refusal is not None:
                    raise DynsecError(self._refusal)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DynsecError(f"cannot reach the broker at {self.host}:{self.port} within "
                                      f"{self.timeout_s:g} s: {self._problem}")  # fmt: skip
                self._state.wait(left)

    # -- paho callbacks (its network thread) ------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        if reason.is_failure:
            with self._state:
                self._refusal = f"the broker at {self.host}:{self.port} refused {self.username!r}'s login: {reason}"
                self._state.notify_all()
            return
        client.subscribe(RESPONSE_TOPIC, qos=1)

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        with self._state:
            self._problem = "connection failed"

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        with self._state:
            self._ready = False
            self._problem = f"disconnected ({reason})"

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Any) -> None:
        with self._state:
            if reasons and reasons[0].is_failure:
                self._sub_refused = True
                self._refusal = (f"{self.username!r} may not subscribe to {RESPONSE_TOPIC} ({reasons[0]}): "
                                 "it needs the dynamic-security admin rights (docs/hub.md)")  # fmt: skip
            else:
                self._ready, self._refusal, self._sub_refused = True, None, False
            self._state.notify_all()

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        if not reason.is_failure:
            return
        error = f"the broker refused {self.username!r}'s command on {CONTROL_TOPIC}: {reason}"
        with self._lock:
            waiter = self._pending.get(self._mids.pop(mid, ""))
            if waiter is None:  # the PUBACK beat `_request` to recording the mid
                self._refused_mids[mid] = error
                return
            waiter.error = error
            waiter.done.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            responses = json.loads(msg.payload)["responses"]
            request_id = responses[0]["correlationData"]
        except (ValueError, KeyError, IndexError, TypeError):
            return  # not an answer to one of our batches (e.g. another tool's malformed command)
        with self._lock:
            waiter = self._pending.get(request_id) if isinstance(request_id, str) else None
            if waiter is not None and not waiter.done.is_set():
                waiter.responses = responses
                waiter.done.set()


def _allow(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": True}


def _acl_set(acls: list[dict[str, Any]]) -> set[tuple[str, str, bool]]:
    return {(a["acltype"], a["topic"], bool(a.get("allow"))) for a in acls}


def _role_names(client: Mapping[str, Any]) -> set[str]:
    return {r["rolename"] for r in client.get("roles", [])}


def _is_device_account(client: Mapping[str, Any], role: str) -> bool:
    """Only this device's role and no groups: anything else belongs to someone else and is left alone."""
    return _role_names(client) == {role} and not client.get("groups")


def _is_listed_device(client: Mapping[str, Any]) -> bool:
    username = str(client.get("username", ""))
    return bool(_DEVICE_ID.match(username)) and _is_device_account(client, f"{DEVICE_ROLE_PREFIX}{username}")


def _ok(response: Mapping[str, Any], what: str, *, tolerate: str | None = None) -> bool:
    """True when the command succeeded, False for a tolerated error; any other error raises."""
    error = response.get("error")
    if error is None:
        return True
    if tolerate is not None and tolerate in str(error).lower():
        return False
    raise DynsecError(f"the broker refused {what}: {error}")


def _describe(command: Mapping[str, Any]) -> str:
    subject = command.get("username") or command.get("rolename") or ""
    return f"{command['command']} {subject}".strip()


def _client_entry(username: str, mosquitto_hash: str, role: str) -> dict[str, Any]:
    """A `$7$<iterations>$<salt>$<hash>` line's parts, as the plugin stores a client."""
    parts = mosquitto_hash.split("$")
    if len(parts) != 5 or parts[1] != "7" or not parts[2].isdigit():
        raise BrokerConfigError(f"{username!r}: not a $7$ (pbkdf2-sha512) password hash")
    return {"username": username, "password": parts[4], "salt": parts[3], "iterations": int(parts[2]),
            "roles": [{"rolename": role}]}  # fmt: skip
