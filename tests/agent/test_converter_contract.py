"""The converter's real output installs on the agent: its manifests pass the agent's self-test and serve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.daemon import Agent
from agent.selftest import run_self_test
from firmware_profiles import get_profile
from tests.agent.harness import Observer, agent_settings, wait_for
from tests.agent.hubstub import HubStub

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from converter.pipeline import ConvertRequest, convert
    from converter.sources import quiet_tensorflow

    quiet_tensorflow()
    import keras

    tmp = tmp_path_factory.mktemp("convert")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3, activation="softmax")]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8)).astype("float32")
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 1)
    model.fit(x, y, epochs=10, verbose=0)
    model.save(tmp / "m.keras")
    np.savez(tmp / "cal.npz", x=x[:200])
    np.savez(tmp / "val.npz", x=x[200:], y=y[200:])
    request = ConvertRequest(
        model=tmp / "m.keras",
        profiles=["raspberry_pi_4", "x86_gateway"],
        calibration=tmp / "cal.npz",
        validation=tmp / "val.npz",
        out=tmp / "out",
        name="clf",
        latency_runs=20,
        cloud=False,
    )
    result = convert(request)
    return {r.profile.name: (r.manifest, result.out / r.profile.name) for r in result.results}


@pytest.mark.parametrize("profile", ["raspberry_pi_4", "x86_gateway"])
def test_converter_manifest_passes_the_agent_self_test(converted: dict[str, object], profile: str) -> None:
    manifest, folder = converted[profile]  # type: ignore[misc]
    assert manifest is not None
    model, result = run_self_test(manifest, folder / manifest.artifact.file, get_profile(profile), "host")
    assert result.cases == len(manifest.golden.cases)
    x = np.zeros((4, 8), np.float32)
    assert next(iter(model.predict({manifest.inputs[0].name: x}).values())).shape == (4, 3)


def test_converter_artifact_installs_through_the_daemon(
    converted: dict[str, object], tmp_path: Path, hub: HubStub, observer: Observer, unique_root: str
) -> None:
    manifest, folder = converted["x86_gateway"]  # type: ignore[misc]
    target = hub.publish(manifest, folder / manifest.artifact.file)
    agent = Agent(agent_settings(tmp_path / "device", hub, unique_root, latency_basis="host"))
    agent.start()
    try:
        observer.desire("dev-1", 1, [("clf", 1, target, False)])
        wait_for(lambda: observer.events("committed"), what="converter artifact committed")
        served = agent.serving.get("clf")
        assert served is not None and served.version == 1
    finally:
        agent.stop()


@pytest.mark.parametrize("profile", ["raspberry_pi_4", "x86_gateway"])
def test_golden_numbers_are_the_float32_values_in_their_shortest_decimals(
    converted: dict[str, object], profile: str
) -> None:
    """Golden inputs are the validation rows exactly as float32, and every golden number (inputs and expected
    outputs) is written as float32's shortest decimal: over a quarter of the golden text saved against float64's
    (about 40 % measured). That the outputs still pass the agent's self-test is the test above."""
    import json

    from protocol.layout import MANIFEST_FILE

    _manifest, folder = converted[profile]  # type: ignore[misc]
    x = np.random.default_rng(0).normal(size=(400, 8)).astype("float32")[200:]  # the fixture's validation rows
    rows = {row.tobytes() for row in x}
    raw = json.loads((folder / MANIFEST_FILE).read_text())
    shortest = longest = 0
    for case in raw["golden"]["cases"]:
        for values in (*case["inputs"].values(), *case["expected"].values()):
            as32 = np.asarray(values, np.float64).astype(np.float32)
            assert [str(v) for v in as32] == [repr(v) for v in values]  # each number: float32's shortest decimal
            shortest += len(json.dumps(values))
            longest += len(json.dumps([float(v) for v in as32]))
        (given,) = case["inputs"].values()
        assert np.asarray(given, np.float64).astype(np.float32).tobytes() in rows
    assert shortest < 0.75 * longest, (shortest, longest)
