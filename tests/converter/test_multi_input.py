"""A two-input Keras model: every artifact kind keeps both inputs by name; golden cases replay in the agent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converter.pipeline import ConvertRequest, convert

pytestmark = [pytest.mark.slow]


def test_two_inputs(tmp_path: Path) -> None:
    from converter.sources import quiet_tensorflow

    quiet_tensorflow()
    import keras

    keras.utils.set_random_seed(0)
    a, b = keras.Input((4,), name="a"), keras.Input((3,), name="b")
    h = keras.layers.Dense(16, activation="relu")(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], keras.layers.Dense(3, activation="softmax")(h))
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    xa, xb = rng.normal(size=(600, 4)).astype("float32"), rng.normal(size=(600, 3)).astype("float32")
    y = ((xa[:, 0] + xb[:, 0]) > 0).astype(int) + (xa[:, 1] > 1)
    model.fit([xa, xb], y, epochs=20, verbose=0)
    model.save(tmp_path / "two.keras")
    np.savez(tmp_path / "cal.npz", a=xa[:300], b=xb[:300])
    np.savez(tmp_path / "val.npz", a=xa[300:], b=xb[300:], y=y[300:])
    res = convert(ConvertRequest(model=tmp_path / "two.keras", profiles=["raspberry_pi_5", "nxp_imx8mp", "x86_gateway"],
                                 calibration=tmp_path / "cal.npz", validation=tmp_path / "val.npz",
                                 out=tmp_path / "out", latency_runs=20, cloud=False))
    from agent.model import LoadedModel
    from agent.offline import run_batches

    for r in res.results:
        m = r.manifest
        assert m is not None, r.refused
        assert sorted(t.name for t in m.inputs) == ["a", "b"]
        assert len(m.baseline.inputs) == 7  # 4 + 3 features, each by name
        loaded = LoadedModel.from_file(res.out / r.profile.name / m.artifact.file, manifest=m)
        for case in m.golden.cases:
            out = loaded.predict({k: np.asarray(v, np.float32)[None] for k, v in case.inputs.items()})
            np.testing.assert_allclose(out[m.outputs[0].name].ravel(), case.expected[m.outputs[0].name],
                                       atol=m.golden.atol)
        # One sample per call, as the converter measured (dynamic-range kinds give batch-dependent outputs).
        got = run_batches(loaded, {"a": xa[300:], "b": xb[300:]}, batch_size=1)[m.outputs[0].name]
        assert float(np.mean(got.argmax(1) == y[300:])) == pytest.approx(m.report.chosen.accuracy)
