"""Session fixtures (a pytest plugin): train the test models once, convert them once, share the outputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from converter.pipeline import ConvertRequest, ConvertResult, convert
from firmware_profiles import load_profiles
from tests.converter.models import Digits, digits, train_keras_cnn, train_torch_cnn
from tests.support.profiles import relaxed_profiles

ALL_PROFILES = sorted(load_profiles())
ONNX_PROFILES = ["x86_gateway", "jetson_orin_nano", "raspberry_pi_5"]


@dataclass(frozen=True)
class Converted:
    model: Path
    calibration: Path
    validation: Path
    data: Digits
    result: ConvertResult

    @property
    def out(self) -> Path:
        return self.result.out


@pytest.fixture(scope="session")
def keras_converted(tmp_path_factory: pytest.TempPathFactory) -> Converted:
    folder = tmp_path_factory.mktemp("keras")
    data = digits()
    model = train_keras_cnn(folder / "digits.keras", data)
    calib, val = data.write(folder)
    req = ConvertRequest(model=model, profiles=ALL_PROFILES, calibration=calib, validation=val,
                         out=folder / "out", latency_runs=50, profiles_dir=relaxed_profiles(folder))
    return Converted(model, calib, val, data, convert(req))


@pytest.fixture(scope="session")
def torch_converted(tmp_path_factory: pytest.TempPathFactory) -> Converted:
    folder = tmp_path_factory.mktemp("torch")
    data = digits(channels_first=True)
    model = train_torch_cnn(folder / "digits.pt", data)
    calib, val = data.write(folder)
    req = ConvertRequest(
        model=model, profiles=[*ONNX_PROFILES, "raspberry_pi_4"], calibration=calib, validation=val,
        out=folder / "out", latency_runs=50, input_shape=[1, 8, 8], name="digits-torch",
        profiles_dir=relaxed_profiles(folder),
    )
    return Converted(model, calib, val, data, convert(req))
