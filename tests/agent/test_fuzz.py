"""Property tests: malformed desired states, commands and manifests are rejected and counted, never crash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agent.daemon import Agent
from agent.errors import RefusedUpdate
from agent.lifecycle import UpdateRecord
from protocol.manifest import Manifest
from protocol.messages import Ack, Command, DesiredState
from protocol.topics import Channel
from tests.agent.builders import make_manifest, onnx_linear
from tests.agent.harness import Observer, agent_settings, wait_for
from tests.agent.hubstub import HubStub

pytestmark = pytest.mark.integration

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
VALID_DESIRED = {
    "schema_version": 1,
    "device_id": "dev-1",
    "generation": 1,
    "models": [{"name": "demo", "version": 1, "manifest_target": "models/demo/1/x86_gateway/manifest.json"}],
    "issued_at": "2026-11-25T10:00:00Z",
}
VALID_COMMAND = {
    "schema_version": 1,
    "command_id": "c1",
    "kind": "rollback",
    "model": "demo",
    "issued_at": "2026-11-25T10:00:00Z",
}


def mutated(valid: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """A valid payload with one field replaced, dropped or added, or arbitrary bytes."""
    keys = st.sampled_from(sorted(valid))
    replace = st.tuples(keys, json_values).map(lambda kv: {**valid, kv[0]: kv[1]})
    drop = keys.map(lambda k: {x: v for x, v in valid.items() if x != k})
    add = st.tuples(st.text(min_size=1, max_size=8), json_values).map(lambda kv: {**valid, "x" + kv[0]: kv[1]})
    as_json = (replace | drop | add).map(lambda d: json.dumps(d).encode())
    return as_json | st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode())


@pytest.fixture
def agent(tmp_path: Path, hub: HubStub, unique_root: str) -> Any:
    a = Agent(agent_settings(tmp_path / "device", hub, unique_root, device_id="dev-1"))
    a.start()
    wait_for(lambda: a.mqtt.connected.is_set(), what="agent subscribed")
    yield a
    a.stop()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=mutated(VALID_DESIRED), channel=st.sampled_from([Channel.DESIRED]))
def test_desired_state_parser_rejects_and_counts(agent: Agent, payload: bytes, channel: Channel) -> None:
    before = agent.rejected
    agent._on_message(channel, payload)  # the MQTT callback itself: must never raise
    try:
        state = DesiredState.from_json(payload) if payload else None
        valid = state is None or state.device_id == "dev-1"
    except ValidationError:
        valid = False
    assert agent.rejected == before + (0 if valid else 1)


VALID_ACK = {"channel": "telemetry", "ids": [1, 2]}


@pytest.mark.parametrize(
    ("channel", "valid", "contract"), [(Channel.CMD, VALID_COMMAND, Command), (Channel.ACK, VALID_ACK, Ack)]
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_command_and_ack_parsers_reject_and_count(
    agent: Agent, channel: Channel, valid: dict[str, Any], contract: type[Command | Ack], data: st.DataObject
) -> None:
    payload = data.draw(mutated(valid))
    before = agent.rejected
    agent._on_message(channel, payload)
    try:
        contract.from_json(payload)
        ok = True
    except ValidationError:
        ok = False
    assert agent.rejected == before + (0 if ok else 1)


def test_rejections_are_reported_and_the_agent_keeps_working(
    tmp_path: Path, hub: HubStub, observer: Observer, agent: Agent
) -> None:
    for bad in (b"{", b'{"device_id": "dev-1"}', b"\xff\xfe", json.dumps({**VALID_DESIRED, "generation": -1}).encode()):
        observer.publish("dev-1", Channel.DESIRED, bad)
    wait_for(lambda: len(observer.events("message_rejected")) >= 4, what="4 rejection events")
    assert agent.rejected >= 4
    art = onnx_linear(tmp_path / "lin_v1.onnx", seed=1)
    target = hub.publish(make_manifest(art, name="demo", version=1), art)
    observer.desire("dev-1", 1, [("demo", 1, target, False)])
    wait_for(lambda: observer.events("committed"), what="still converges")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_manifest_parser_refuses_malformed(tmp_path: Path, agent: Agent, data: st.DataObject) -> None:
    valid = json.loads(_valid_manifest(tmp_path).to_json())
    payload = data.draw(mutated(valid))
    record = UpdateRecord(name="demo", target_version=1)
    work = agent.steps.workdir(record)
    work.mkdir(parents=True, exist_ok=True)
    (work / "manifest.json").write_bytes(payload)
    try:
        Manifest.from_json(payload)
        valid_payload = True
    except ValidationError:
        valid_payload = False
    if valid_payload:
        assert agent.steps._manifest(record).name
    else:
        with pytest.raises(RefusedUpdate, match="invalid manifest"):
            agent.steps._manifest(record)


_CACHE: dict[str, Manifest] = {}


def _valid_manifest(tmp_path: Path) -> Manifest:
    if "m" not in _CACHE:
        _CACHE["m"] = make_manifest(onnx_linear(tmp_path / "m.onnx"), name="demo", version=1)
    return _CACHE["m"]
