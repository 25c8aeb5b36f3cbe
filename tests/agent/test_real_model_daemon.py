"""A real third-party model through the whole device path: silero-vad (a 0-d int64 sample rate, recurrent state
in and out) converted for x86_gateway, signed by a hub, installed, self-tested on golden cases that record their
shapes, served over the daemon's local API to JSON callers, with telemetry windows that count it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from agent.daemon import Agent
from converter.pipeline import ConvertRequest, convert
from protocol.manifest import Manifest
from protocol.telemetry import TelemetrySummary, decode_message
from protocol.topics import Channel
from tests.agent.harness import Observer, agent_settings, local_api, wait_for
from tests.agent.hubstub import HubStub
from tests.corpus.catalog import BY_KEY, Reference

pytestmark = [pytest.mark.slow, pytest.mark.integration]
SILERO = BY_KEY["silero_vad"]


@pytest.fixture
def served(tmp_path: Path, hub: HubStub, observer: Observer, unique_root: str) -> Iterator[tuple[str, Manifest]]:
    assert SILERO.dataset is not None
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "cal.npz", **SILERO.dataset(rng, 16))
    np.savez(tmp_path / "val.npz", **SILERO.dataset(rng, 16))
    req = ConvertRequest(model=SILERO.file(), profiles=["x86_gateway"], calibration=tmp_path / "cal.npz",
                         validation=tmp_path / "val.npz", out=tmp_path / "out", name="vad", task="regression",
                         latency_runs=10, cloud=False)
    result = convert(req)
    manifest = result.results[0].manifest
    assert manifest is not None
    assert manifest.golden.cases[0].shapes == {"input": [1, 576], "state": [2, 1, 128], "sr": []}
    agent = Agent(agent_settings(tmp_path / "device", hub, unique_root, telemetry={"window_size": 3, "tick_s": 0.2}))
    agent.start()
    target = hub.publish(manifest, tmp_path / "out" / "x86_gateway" / manifest.artifact.file)
    observer.desire("dev-1", 1, [("vad", 1, target, False)])
    wait_for(lambda: any(e["version"] == 1 for e in observer.events("committed")), what="silero committed")
    with local_api(agent) as url:
        yield url, manifest
    agent.stop()


def test_json_callers_get_what_onnxruntime_gives(served: tuple[str, Manifest], observer: Observer) -> None:
    url, manifest = served
    reference = Reference(SILERO)
    state: list[object] | None = None
    for feed, want in reference.calls(SILERO.calls(np.random.default_rng(0))):
        body = {"input": feed["input"].tolist(), "sr": 16000,
                "state": state if state is not None else feed["state"].tolist()}
        r = httpx.post(f"{url}/v1/models/vad/predict", json={"inputs": body})
        assert r.status_code == 200, r.text
        got = r.json()["outputs"]
        assert sorted(got) == ["output", "stateN"]
        np.testing.assert_allclose(np.asarray(got["output"], np.float32), want["output"], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(np.asarray(got["stateN"], np.float32), want["stateN"], rtol=1e-6, atol=1e-6)
        state = got["stateN"]  # carried by the caller, as the package's VADIterator carries it
    # The window of 3 calls closed and went out: the scalar and the state counted one row per call, against the
    # converter's baseline bins for them.
    def sent() -> list[TelemetrySummary]:
        return [m.summary for m in map(decode_message, observer.raw(Channel.TELEMETRY)) if m.summary.model == "vad"]

    summary = wait_for(sent, what="a telemetry summary")[0]
    assert summary.n == 3 and summary.errors == 0
    by_name = {f.name: f for f in summary.inputs}
    assert sum(by_name["sr[0]"].counts) == 3
    assert len([n for n in by_name if n.startswith("state[")]) == len(
        [h for h in manifest.baseline.inputs if h.name.startswith("state[")]
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sr": [16000, 8000]}, "input 'sr': shape [2] does not fit []"),
        ({"sr": 16000.5}, "input 'sr': float values for integer tensor (int64)"),
        ({"state": [[[0.0] * 128]]}, "input 'state': dim 0 is 1, expected 2"),
    ],
)
def test_bad_scalar_or_state_is_a_4xx(served: tuple[str, Manifest], change: dict[str, object], message: str) -> None:
    url, _ = served
    body = {"input": [[0.0] * 576], "state": np.zeros((2, 1, 128)).tolist(), "sr": 16000, **change}
    r = httpx.post(f"{url}/v1/models/vad/predict", json={"inputs": body})
    assert r.status_code == 422 and message in r.json()["error"], r.text
