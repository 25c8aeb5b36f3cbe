"""MQTT payload contracts and topic names."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from protocol.messages import DesiredModel, DesiredState, Event, EventKind
from protocol.topics import Channel, device_topic, parse_device_topic, shared_wildcard, wildcard


def test_topics() -> None:
    assert device_topic("dev-1", Channel.DESIRED) == "edgefleet/v1/devices/dev-1/desired"
    assert parse_device_topic("edgefleet/v1/devices/dev-1/events") == ("dev-1", Channel.EVENTS)
    assert wildcard(Channel.REPORTED) == "edgefleet/v1/devices/+/reported"
    assert shared_wildcard(Channel.TELEMETRY) == "$share/hub/edgefleet/v1/devices/+/telemetry"
    for bad in ("a/b", "a+", "#", "", "x" * 65):
        with pytest.raises(ValueError, match="invalid device id"):
            device_topic(bad, Channel.DESIRED)
    for bad in ("edgefleet/v1/devices/a/b/desired", "other/v1/devices/a/desired", "edgefleet/v1/devices/a/nope"):
        with pytest.raises(ValueError):
            parse_device_topic(bad)


def test_desired_state_round_trip() -> None:
    d = DesiredState(device_id="dev-1", generation=7, issued_at=datetime(2026, 1, 1, tzinfo=UTC),
                     models=[DesiredModel(name="digits", version=2, manifest_target="models/digits/2/x/manifest.json")])
    assert DesiredState.from_json(d.to_json()) == d
    assert DesiredState.from_json(d.to_json()).to_json() == d.to_json()


@given(st.binary(max_size=300))
def test_garbage_payloads_raise_validation_error_only(payload: bytes) -> None:
    """Arbitrary bytes either fail validation with a message or are a complete valid payload."""
    for model in (DesiredState, Event):
        try:
            parsed = model.from_json(payload)
        except ValidationError as e:
            assert e.error_count() >= 1 and str(e)
        else:
            assert model.from_json(parsed.to_json()) == parsed


def test_event_rejects_unknown_kind() -> None:
    e = Event(device_id="d", seq=1, kind=EventKind.COMMITTED, ts=datetime(2026, 1, 1, tzinfo=UTC))
    data = e.to_json().replace("committed", "exploded")
    with pytest.raises(ValidationError, match="kind"):
        Event.from_json(data)
