"""A regressor (no labels): max abs error instead of accuracy, output histograms in the baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converter.pipeline import ConvertRequest, convert
from protocol.manifest import Task
from tests.converter.models import train_keras_regressor

pytestmark = [pytest.mark.slow]


def test_keras_regressor(tmp_path: Path) -> None:
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    y = ((y - y.mean()) / y.std()).astype(np.float32)
    model = train_keras_regressor(tmp_path / "diabetes.keras", x[:300], y[:300])
    np.save(tmp_path / "calib.npy", x[:300])
    np.save(tmp_path / "val.npy", x[300:])
    res = convert(ConvertRequest(model=model, profiles=["raspberry_pi_5"], calibration=tmp_path / "calib.npy",
                                 validation=tmp_path / "val.npy", out=tmp_path / "out", latency_runs=20, cloud=False))
    m = res.results[0].manifest
    assert m is not None and m.task is Task.REGRESSION
    assert m.report.chosen.accuracy is None and m.report.chosen.max_abs_error is not None
    assert m.baseline.class_counts is None and len(m.baseline.outputs) == 1
    assert len(m.baseline.inputs) == 10 and sum(m.baseline.outputs[0].counts) == len(x) - 300
    assert all(c.expected_top1 is None for c in m.golden.cases)
