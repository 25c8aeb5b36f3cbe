"""Agent test fixtures: tiny real models built once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.tuf_repo import TufRepository
from tests.agent.builders import tflite_models
from tests.agent.harness import Observer
from tests.agent.hubstub import HubStub
from tests.support.broker import Broker


@pytest.fixture(scope="session")
def tflite_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A float and a full-int8 TFLite model (built with TensorFlow once per session)."""
    return tflite_models(tmp_path_factory.mktemp("tflite"))


@pytest.fixture
def hub(tmp_path: Path, broker: Broker) -> Iterator[HubStub]:
    """A real TUF repository (hub.tuf_repo) served with enrollment over real HTTP."""
    stub = HubStub(TufRepository.create(tmp_path / "tufrepo"), mqtt_port=broker.port).start()
    yield stub
    stub.stop()


@pytest.fixture
def observer(broker: Broker, unique_root: str) -> Iterator[Observer]:
    """A hub-side MQTT client on the test's private broker and topic root."""
    obs = Observer(broker, unique_root)
    yield obs
    obs.close()


@pytest.fixture
def make_agent(tmp_path: Path, hub: HubStub, unique_root: str) -> Iterator[object]:
    """Start agents (settings overrides as keyword arguments) against the stub hub; stopped afterwards."""
    from agent.daemon import Agent
    from tests.agent.harness import agent_settings

    agents: list[Agent] = []

    def make(**overrides: object) -> Agent:
        a = Agent(agent_settings(tmp_path / "device", hub, unique_root, **overrides))
        a.start()
        agents.append(a)
        return a

    yield make
    for a in agents:
        a.stop()
