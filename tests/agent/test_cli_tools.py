"""`edgefleet agent predict` and `edgefleet agent batch` on real model files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgefleet.cli import cli
from tests.agent.builders import onnx_linear, onnx_multi


def test_predict_prints_and_saves_npz(tmp_path: Path) -> None:
    model = onnx_multi(tmp_path / "multi.onnx")
    np.savez(tmp_path / "in.npz", a=np.ones((2, 2), np.float32), b=np.ones((2, 3), np.float32))
    res = CliRunner().invoke(cli, ["agent", "predict", str(model), str(tmp_path / "in.npz")])
    assert res.exit_code == 0, res.output
    assert "d [2, 3] float32" in res.output
    out = tmp_path / "out.npz"
    res = CliRunner().invoke(cli, ["agent", "predict", str(model), str(tmp_path / "in.npz"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    with np.load(out) as saved:
        assert sorted(saved.files) == ["d", "s"]
        np.testing.assert_allclose(saved["d"], 2 * np.ones((2, 3)))


def test_predict_tflite_lone_array_feeds_lone_input(tmp_path: Path, tflite_paths: dict[str, Path]) -> None:
    np.savez(tmp_path / "in.npz", np.zeros((1, 6), np.float32))
    res = CliRunner().invoke(cli, ["agent", "predict", str(tflite_paths["int8"]), str(tmp_path / "in.npz")])
    assert res.exit_code == 0, res.output
    assert "[1, 3] float32" in res.output


def test_predict_bad_input_is_one_line_and_nonzero(tmp_path: Path) -> None:
    model = onnx_linear(tmp_path / "lin.onnx")
    np.savez(tmp_path / "in.npz", x=np.ones((2, 5), np.float32))
    res = CliRunner().invoke(cli, ["agent", "predict", str(model), str(tmp_path / "in.npz")])
    assert res.exit_code == 1
    assert res.output.strip() == f"Error: {tmp_path / 'in.npz'}: input 'x': dim 1 is 5, expected 4 (shape [?, 4])"
    (tmp_path / "junk.npz").write_text("junk")
    res = CliRunner().invoke(cli, ["agent", "predict", str(model), str(tmp_path / "junk.npz")])
    assert res.exit_code == 1 and "not a readable .npz" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_batch_csv_to_csv_and_npz(tmp_path: Path) -> None:
    model = onnx_linear(tmp_path / "lin.onnx")
    rows = np.random.default_rng(0).normal(size=(10, 4))
    csv_in = tmp_path / "in.csv"
    csv_in.write_text("a,b,c,d\n" + "\n".join(",".join(f"{v:.6f}" for v in r) for r in rows) + "\n")
    res = CliRunner().invoke(
        cli, ["agent", "batch", str(model), str(csv_in), "--out", str(tmp_path / "o.csv"), "--batch-size", "3"]
    )
    assert res.exit_code == 0, res.output
    lines = (tmp_path / "o.csv").read_text().splitlines()
    assert lines[0] == "y_0,y_1,y_2" and len(lines) == 11
    np.savez(tmp_path / "in.npz", x=rows.astype(np.float32))
    res = CliRunner().invoke(
        cli, ["agent", "batch", str(model), str(tmp_path / "in.npz"), "--out", str(tmp_path / "o.npz")]
    )
    assert res.exit_code == 0, res.output
    with np.load(tmp_path / "o.npz") as saved:
        np.testing.assert_allclose(saved["y"][:, 0], [float(x.split(",")[0]) for x in lines[1:]], rtol=1e-4, atol=1e-5)


def test_batch_bad_csv_is_readable_error(tmp_path: Path) -> None:
    model = onnx_linear(tmp_path / "lin.onnx")
    (tmp_path / "in.csv").write_text("1,2,3,4\n1,2,x,4\n")
    res = CliRunner().invoke(
        cli, ["agent", "batch", str(model), str(tmp_path / "in.csv"), "--out", str(tmp_path / "o.csv")]
    )
    assert res.exit_code == 1 and "non-numeric value in CSV" in res.output


def test_agent_cli_never_imports_tensorflow(tmp_path: Path) -> None:
    model = onnx_linear(tmp_path / "lin.onnx")
    np.savez(tmp_path / "in.npz", x=np.ones((1, 4), np.float32))
    code = (
        "import sys\nfrom edgefleet.cli import cli\n"
        f"cli(['agent', 'predict', {str(model)!r}, {str(tmp_path / 'in.npz')!r}], standalone_mode=False)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'tf2onnx', 'torch')]\n"
        "print('HEAVY', bad)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout


def test_missing_file_and_unknown_format_are_one_line(tmp_path: Path) -> None:
    np.savez(tmp_path / "in.npz", x=np.ones((1, 4), np.float32))
    res = CliRunner().invoke(cli, ["agent", "predict", str(tmp_path / "nope.onnx"), str(tmp_path / "in.npz")])
    assert res.exit_code == 1 and res.output.strip() == f"Error: {tmp_path / 'nope.onnx'}: no such file"
    (tmp_path / "m.pt").write_bytes(b"torch")
    res = CliRunner().invoke(
        cli, ["agent", "batch", str(tmp_path / "m.pt"), str(tmp_path / "in.npz"), "--out", "o.npz"]
    )
    assert res.exit_code == 1 and res.output.strip() == "Error: no runtime for format 'pt'; known: tflite, onnx"


def test_batch_and_profiles_work_without_rich(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `edgefleet[agent]` does not install rich (install size): the device's CLI tools fall back to plain text.
    for name in [m for m in sys.modules if m == "rich" or m.startswith("rich.")] + ["rich"]:
        monkeypatch.setitem(sys.modules, name, None)  # what Python keeps for a module that cannot be imported
    model = onnx_linear(tmp_path / "lin.onnx")
    np.savez(tmp_path / "in.npz", x=np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32))
    res = CliRunner().invoke(cli, ["agent", "batch", str(model), str(tmp_path / "in.npz"), "--out",
                                   str(tmp_path / "o.npz"), "--batch-size", "5"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "predict 20/20 (100%)" in res.output and "wrote 20 rows of y" in res.output
    with np.load(tmp_path / "o.npz") as saved:
        assert saved["y"].shape == (20, 3)
    res = CliRunner().invoke(cli, ["profiles", "list"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0] == "Firmware profiles" and lines[1].split()[:3] == ["name", "arch", "accel"]
    assert any(line.startswith("raspberry_pi_4 ") for line in lines)
    res = CliRunner().invoke(cli, ["profiles", "show", "esp32_s3"])
    assert res.exit_code == 0 and "256 KiB" in res.output and "tflite_micro" in res.output


def test_agent_predict_keeps_litert_chatter_off_stderr(tmp_path: Path, tflite_paths: dict[str, Path]) -> None:
    """LiteRT's C++ `INFO: Created TensorFlow Lite XNNPACK delegate` line no longer reaches the CLI's stderr."""
    np.savez(tmp_path / "in.npz", np.zeros((1, 6), np.float32))
    run = subprocess.run(
        [sys.executable, "-m", "edgefleet", "agent", "predict", str(tflite_paths["float"]), str(tmp_path / "in.npz")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "output_0 [1, 3] float32" in run.stdout
    assert "INFO:" not in run.stderr, run.stderr


def test_native_stderr_filter_drops_info_lines_only(capfd: pytest.CaptureFixture[str]) -> None:
    from agent.runtimes.litert import native_info_to_debug

    with native_info_to_debug():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\nWARNING: kept\n")
    assert capfd.readouterr().err == "WARNING: kept\n"


def test_agent_predict_with_a_misnamed_array_names_it_and_the_file(tmp_path: Path) -> None:
    model = onnx_linear(tmp_path / "m.onnx")
    np.savez(tmp_path / "in.npz", image=np.zeros((1, 4), np.float32))
    res = CliRunner().invoke(cli, ["agent", "predict", str(model), str(tmp_path / "in.npz")])
    assert res.exit_code == 1
    assert f"{tmp_path / 'in.npz'}: unknown input(s): image; the model takes x (missing: x)" in res.output
