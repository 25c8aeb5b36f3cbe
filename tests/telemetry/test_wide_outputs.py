"""A regressor with several wide outputs (basic-pitch: three spectrogram-like outputs of 15-45k values a sample):
the converter keeps histograms of the first output only, one per channel, and the agent records exactly those.

Before, the converter wrote a histogram for every value of every output (75,680 of them, a 50 MB manifest) while the
agent recorded the first output alone: its recorder refused the first prediction (shapes 15,136 vs 75,680)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.telemetry import WindowRecorder
from converter.stats import baseline_stats, bin_counts
from protocol.drift import drift_report
from protocol.manifest import Manifest, TensorSpec
from tests.agent.builders import make_manifest, onnx_linear


def _manifest(tmp_path: Path, x: np.ndarray, outputs: dict[str, np.ndarray]) -> Manifest:
    base = make_manifest(onnx_linear(tmp_path / "m.onnx"))
    return base.model_copy(
        update={
            "inputs": [TensorSpec(name="audio", shape=[None, *x.shape[1:]], dtype="float32")],
            "outputs": [TensorSpec(name=k, shape=[None, *v.shape[1:]], dtype="float32") for k, v in outputs.items()],
            "baseline": baseline_stats({"audio": x}, outputs, classifier=False),
        }
    )


def test_the_first_wide_output_is_grouped_by_channel_and_recorded_as_the_converter_counted_it(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 300, 1)).astype(np.float32)
    outputs = {
        "contour": rng.random((16, 172, 88), dtype=np.float32),
        "note": rng.random((16, 172, 88), dtype=np.float32),
        "onset": rng.random((16, 172, 264), dtype=np.float32),
    }
    manifest = _manifest(tmp_path, x, outputs)
    names = [h.name for h in manifest.baseline.outputs]
    assert names == [f"contour[c{j}]" for j in range(88)]  # the first output, per channel; not 75,680 histograms
    assert len(manifest.model_dump_json()) < 200_000

    rec = WindowRecorder(manifest, "dev-1", window_size=10_000)
    for i in range(len(x)):
        rec.record({"audio": x[i : i + 1]}, {k: v[i : i + 1] for k, v in outputs.items()}, 1.0)
    window = rec.close_window()
    assert window is not None and window.n == len(x)
    assert [f.name for f in window.outputs] == names
    # The agent samples 16 positions a sample per channel (as for inputs); the converter counted every position:
    # each channel's count is rows x positions sampled, over the baseline's bins.
    for f, h in zip(window.outputs, manifest.baseline.outputs, strict=True):
        assert sum(f.counts) + f.below_min + f.above_max + f.missing == len(x) * 16
        assert len(f.counts) == len(h.counts)
    positions = np.linspace(0, 171, 16).astype(int)
    channel0 = outputs["contour"][:, positions, 0]
    assert window.outputs[0].counts == list(bin_counts(channel0, np.asarray(manifest.baseline.outputs[0].edges)))
    assert drift_report(manifest.baseline, window).dataset_drift is False  # the baseline's own data


def test_answers_the_baseline_cannot_bin_are_served_unrecorded_counted_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A manifest whose output histograms do not fit the model's answers (one made by another converter, say) costs
    the telemetry of those answers, never the answers: each is counted, the first one logged."""
    from agent.inference import InferenceService
    from agent.metrics import AgentMetrics
    from agent.model import LoadedModel
    from agent.serving import ServingRegistry
    from agent.telemetry.recorders import Recorders

    art = onnx_linear(tmp_path / "lin.onnx")  # x [?, 4] -> y [?, 3]
    manifest = make_manifest(art)
    x = np.random.default_rng(1).normal(size=(16, 4)).astype(np.float32)
    wrong = baseline_stats({"x": x}, {"y": np.zeros((16, 5), np.float32)}, classifier=False)  # 5 outputs, not 3
    manifest = manifest.model_copy(update={"baseline": wrong})
    serving = ServingRegistry()
    serving.install("demo", 1, LoadedModel.from_file(art, manifest=manifest))
    metrics = AgentMetrics()
    recorders = Recorders("dev-1", "x86_gateway", window_size=1000, window_seconds=3600)
    service = InferenceService(serving, metrics, recorders)
    with caplog.at_level("WARNING", logger="agent.inference"):
        answers = [service.predict("demo", {"x": x[i : i + 1]}) for i in range(3)]
    assert all(a.outputs["y"].shape == (1, 3) for a in answers)
    assert metrics.registry.get_sample_value("edgefleet_agent_telemetry_unrecorded_total", {"model": "demo"}) == 3
    said = [r.getMessage() for r in caplog.records if "cannot record" in r.getMessage()]
    assert len(said) == 1 and "demo v1" in said[0], said
