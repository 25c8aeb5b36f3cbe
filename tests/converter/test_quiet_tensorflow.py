"""TensorFlow's start-up chatter stays off a user's stderr (the demo and the converter print their own lines)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

SCRIPT = """
import numpy as np
from converter.sources import quiet_tensorflow
quiet_tensorflow()
import keras
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
model.compile(loss="mse")
model.fit(np.zeros((8, 4), np.float32), np.zeros((8, 2), np.float32), epochs=1, verbose=0)
print("trained")
"""


def test_no_native_log_lines_reach_stderr_while_building_and_training() -> None:
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0 and run.stdout.strip() == "trained", run.stderr
    native = [line for line in run.stderr.splitlines() if line[:1] in "EWI" and line[1:5].isdigit()]  # absl: E0000
    assert native == [] and "cuInit" not in run.stderr, run.stderr
