"""Agent test fixtures: tiny real models built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent.builders import tflite_models


@pytest.fixture(scope="session")
def tflite_paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A float and a full-int8 TFLite model (built with TensorFlow once per session)."""
    return tflite_models(tmp_path_factory.mktemp("tflite"))
