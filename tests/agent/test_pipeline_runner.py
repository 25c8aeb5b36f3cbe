"""A pipeline run in process and from the CLI: a LiteRT stage, an onnxruntime stage and built-in steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from agent.errors import InputError
from agent.model import LoadedModel
from agent.pipeline.local import load_spec_file, local_runner
from agent.pipeline.runner import PipelineError, PipelineRunner, stage_io
from edgefleet.cli import cli
from protocol.pipeline import check_wiring, spec_from_toml
from tests.agent.builders import onnx_linear

SPEC = """
name = "mixed"
version = 1

[[inputs]]
name = "features"
shape = [1, 6]
dtype = "float32"

[[stages]]
name = "embed"
model = "dense"
version = 1
inputs = { features = "inputs.features" }

[[stages]]
name = "head"
model = "linear"
version = 1
inputs = { x = "embed.output_0" }

[[steps]]
name = "label"
op = "argmax"
inputs = { x = "head.y" }

[outputs]
label = "label.out"
scores = "head.y"
"""


@pytest.fixture
def stages(tmp_path: Path, tflite_paths: dict[str, Path]) -> dict[str, Path]:
    return {"embed": tflite_paths["float"], "head": onnx_linear(tmp_path / "head.onnx", n_in=3, n_out=4, seed=3)}


def test_a_mixed_runtime_pipeline_equals_its_stages_run_by_hand(stages: dict[str, Path]) -> None:
    spec = spec_from_toml(SPEC)
    runner = local_runner(spec, stages)
    assert {name: type(m.runtime).__name__ for name, m in runner.models.items()} == {
        "embed": "LiteRTRuntime",
        "head": "OnnxRuntime",
    }
    x = np.random.default_rng(0).normal(size=(1, 6)).astype(np.float32)
    result = runner.run({"features": x})
    embed = LoadedModel.from_file(stages["embed"]).predict({"features": x})["output_0"]
    head = LoadedModel.from_file(stages["head"]).predict({"x": embed})["y"]
    np.testing.assert_allclose(result.outputs["scores"], head, rtol=1e-6)
    np.testing.assert_array_equal(result.outputs["label"], np.argmax(head, axis=-1))
    assert list(result.node_ms) == ["embed", "head", "label"]
    assert all(ms >= 0 for ms in result.node_ms.values())


def test_a_one_sample_input_without_its_batch_dim_is_taken(stages: dict[str, Path]) -> None:
    runner = local_runner(spec_from_toml(SPEC), stages)
    x = np.arange(6, dtype=np.float32) / 6
    np.testing.assert_allclose(
        runner.run({"features": x}).outputs["scores"], runner.run({"features": x[None]}).outputs["scores"]
    )


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"feature": np.zeros((1, 6))}, "unknown input(s): feature; the pipeline takes features"),
        ({}, "missing input(s): features"),
        ({"features": np.zeros((1, 5))}, "input 'features': dim 1 is 5, expected 6"),
        ({"features": np.array(["a"] * 6)}, "input 'features': dtype <U1 is not numeric"),
    ],
)
def test_bad_pipeline_inputs_are_one_clear_error(
    stages: dict[str, Path], inputs: dict[str, object], message: str
) -> None:
    runner = local_runner(spec_from_toml(SPEC), stages)
    with pytest.raises(PipelineError) as e:
        runner.run(inputs)
    assert message in str(e.value)


def test_a_stage_model_that_does_not_fit_the_wiring_is_refused_before_anything_runs(
    tmp_path: Path, stages: dict[str, Path]
) -> None:
    wrong = onnx_linear(tmp_path / "wide.onnx", n_in=5, n_out=4)
    with pytest.raises(InputError, match=r"stage 'head' input 'x' from 'embed.output_0': shape \[\?, 3\] does not fit"):
        local_runner(spec_from_toml(SPEC), {**stages, "head": wrong})
    with pytest.raises(InputError, match="give its artifact with --stage head=PATH"):
        local_runner(spec_from_toml(SPEC), {"embed": stages["embed"]})
    with pytest.raises(InputError, match="--stage tail: the pipeline has no such stage; its stages are embed, head"):
        local_runner(spec_from_toml(SPEC), {**stages, "tail": wrong})


def test_a_window_step_keeps_frames_across_calls_and_reset_forgets_them(tmp_path: Path) -> None:
    spec = spec_from_toml(
        """
name = "stream"
version = 1
[[inputs]]
name = "frame"
shape = [4]
dtype = "float32"
[[steps]]
name = "frames"
op = "window"
params = { size = 3 }
inputs = { x = "inputs.frame" }
[[stages]]
name = "score"
model = "linear"
version = 1
inputs = { x = "frames.out" }
[outputs]
y = "score.y"
ready = "frames.ready"
"""
    )
    model = LoadedModel.from_file(onnx_linear(tmp_path / "lin.onnx", n_in=4, n_out=2))
    check_wiring(spec, {"score": stage_io(model)})
    runner = PipelineRunner(spec, {"score": model})
    readiness = [bool(runner.run({"frame": np.full(4, i, np.float32)}).outputs["ready"]) for i in range(4)]
    assert readiness == [False, False, True, True]
    runner.reset()
    assert not bool(runner.run({"frame": np.ones(4, np.float32)}).outputs["ready"])


def test_agent_predict_pipeline_from_the_cli(tmp_path: Path, stages: dict[str, Path]) -> None:
    spec_file = tmp_path / "mixed.toml"
    spec_file.write_text(SPEC)
    x = np.random.default_rng(1).normal(size=(1, 6)).astype(np.float32)
    np.savez(tmp_path / "in.npz", features=x)
    args = ["agent", "predict", "--pipeline", str(spec_file), str(tmp_path / "in.npz")]
    stage_args = ["--stage", f"embed={stages['embed']}", "--stage", f"head={stages['head']}"]
    out = tmp_path / "out.npz"
    result = CliRunner().invoke(cli, [*args, *stage_args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "pipeline mixed v1:" in result.output and "embed" in result.output
    expected = local_runner(load_spec_file(spec_file), stages).run({"features": x}).outputs
    with np.load(out) as saved:
        np.testing.assert_allclose(saved["scores"], expected["scores"], rtol=1e-6)
        np.testing.assert_array_equal(saved["label"], expected["label"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--stage", "embed"], "--stage 'embed': expected NAME=PATH"),
        (["--stage", "embed=EMBED", "--stage", "head=/nonexistent.onnx"], "stage 'head': /nonexistent.onnx: no such"),
        ([], "stage 'embed' (dense v1): give its artifact with --stage embed=PATH"),
    ],
)
def test_agent_predict_pipeline_mistakes_are_one_line_and_exit_1(
    tmp_path: Path, stages: dict[str, Path], extra: list[str], message: str
) -> None:
    spec_file = tmp_path / "mixed.toml"
    spec_file.write_text(SPEC)
    np.savez(tmp_path / "in.npz", features=np.zeros((1, 6), np.float32))
    extra = [e.replace("EMBED", str(stages["embed"])) for e in extra]
    result = CliRunner().invoke(
        cli, ["agent", "predict", "--pipeline", str(spec_file), str(tmp_path / "in.npz"), *extra]
    )
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_broken_spec_file_names_the_file_and_key(tmp_path: Path) -> None:
    spec_file = tmp_path / "bad.toml"
    spec_file.write_text(SPEC.replace('op = "argmax"', 'op = "softmax"'))
    np.savez(tmp_path / "in.npz", features=np.zeros((1, 6), np.float32))
    result = CliRunner().invoke(cli, ["agent", "predict", "--pipeline", str(spec_file), str(tmp_path / "in.npz")])
    assert result.exit_code == 1
    assert f"{spec_file}: steps.0.params: unknown op; built-in steps are argmax" in result.output


def test_agent_batch_runs_every_row_through_the_pipeline(tmp_path: Path, stages: dict[str, Path]) -> None:
    spec_file = tmp_path / "mixed.toml"
    spec_file.write_text(SPEC)
    rows = np.random.default_rng(2).normal(size=(5, 1, 6)).astype(np.float32)
    np.savez(tmp_path / "rows.npz", features=rows)
    out = tmp_path / "out.npz"
    args = ["agent", "batch", "--pipeline", str(spec_file), str(tmp_path / "rows.npz"), "--out", str(out)]
    result = CliRunner().invoke(
        cli, [*args, "--stage", f"embed={stages['embed']}", "--stage", f"head={stages['head']}"]
    )
    assert result.exit_code == 0, result.output
    assert "wrote 5 rows of label, scores" in result.output
    runner = local_runner(load_spec_file(spec_file), stages)
    with np.load(out) as saved:
        for i in range(5):
            expected = runner.run({"features": rows[i]}).outputs
            np.testing.assert_allclose(saved["scores"][i], expected["scores"][0], rtol=1e-6)
            assert saved["label"][i] == expected["label"][0]


def test_golden_top1_is_checked_per_row_of_a_batched_classifier_output() -> None:
    from agent.pipeline.golden import row_top1

    crops = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])  # three crops, each its own answer
    assert row_top1(crops) == [1, 0, 2]
    assert row_top1(np.array([0.2, 0.7])) == [1]
