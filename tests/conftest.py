"""Shared fixtures: a private Mosquitto per test that asks for one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.broker import Broker, start_broker

# Trained + converted digits models (Keras, PyTorch), shared by converter, fallback and demo tests.
pytest_plugins = ["tests.support.converted"]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A private anonymous Mosquitto on a free loopback port."""
    b = start_broker(tmp_path / "mosquitto")
    yield b
    b.stop()


@pytest.fixture
def unique_root() -> str:
    """A unique topic root so tests never see each other's retained messages."""
    return f"edgefleet-test-{uuid.uuid4().hex[:8]}/v1"
