"""Bad input exits non-zero with one readable line and leaves nothing half-written."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgefleet.cli import cli
from tests.support.converted import Converted

pytestmark = [pytest.mark.slow]


def _run(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(cli, args)
    return res.exit_code, res.output


def _args(conv: Converted, out: Path, model: Path | None = None, calib: Path | None = None,
          val: Path | None = None, profile: str = "x86_gateway") -> list[str]:
    return ["convert", str(model or conv.model), "--profile", profile, "--calibration", str(calib or conv.calibration),
            "--validation", str(val or conv.validation), "--out", str(out), "--latency-runs", "10", "--no-cloud"]


def _error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith("Error: ")]
    assert len(lines) == 1, output
    return lines[0]


def _nothing_written(parent: Path, out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in parent.iterdir() if p.name.startswith(f".{out.name}")] == []


def test_unreadable_model(keras_converted: Converted, tmp_path: Path) -> None:
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"this is not a zip archive")
    code, out = _run(_args(keras_converted, tmp_path / "out", model=bad))
    line = _error_line(out)
    assert code == 1 and "broken.keras: not a Keras v3 model file" in line and "File not found" not in line
    _nothing_written(tmp_path, tmp_path / "out")


@pytest.mark.parametrize("name", ["model.bin", "missing.onnx"])
def test_unknown_or_missing_model(keras_converted: Converted, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name.endswith(".bin"):
        path.write_bytes(b"x")
    code, out = _run(_args(keras_converted, tmp_path / "out", model=path))
    assert code == 1 and name in _error_line(out)


def test_wrong_input_shape(keras_converted: Converted, tmp_path: Path) -> None:
    val = tmp_path / "val.npz"
    np.savez(val, x=np.zeros((10, 64), np.float32), y=np.zeros(10, np.int64))
    code, out = _run(_args(keras_converted, tmp_path / "out", val=val))
    line = _error_line(out)
    assert code == 1 and "shape (10, 64)" in line and "(N, 8, 8, 1)" in line
    _nothing_written(tmp_path, tmp_path / "out")


def test_calibration_wrong_dtype(keras_converted: Converted, tmp_path: Path) -> None:
    calib = tmp_path / "calib.npy"
    np.save(calib, np.zeros((10, 8, 8, 1), np.int32))
    code, out = _run(_args(keras_converted, tmp_path / "out", calib=calib))
    assert code == 1 and "must be floating point" in _error_line(out)


def test_unknown_profile(keras_converted: Converted, tmp_path: Path) -> None:
    code, out = _run(_args(keras_converted, tmp_path / "out", profile="toaster_9000"))
    assert code == 1 and "unknown profile 'toaster_9000'" in _error_line(out)


def test_non_empty_out_needs_force(keras_converted: Converted, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("mine")
    code, out = _run(_args(keras_converted, out_dir))
    assert code == 1 and "--force" in _error_line(out)
    assert (out_dir / "keep.txt").read_text() == "mine"


def test_budget_refusal_says_which_and_by_how_much(keras_converted: Converted, tmp_path: Path) -> None:
    pdir = tmp_path / "profiles"
    pdir.mkdir()
    (pdir / "tiny_mcu.toml").write_text(
        'name = "tiny_mcu"\ndescription = "an MCU with almost no flash"\narch = "riscv32"\n'
        'runtimes = ["tflite_micro"]\nformats = ["tflite"]\nquantizations = ["int8"]\nio_dtype = "int8"\n'
        "threads = 1\nbudgets = { max_artifact_bytes = 4096, max_ram_bytes = 65536, arena_bytes = 32768, "
        "latency_ms = 100.0, max_accuracy_loss_pt = 2.0 }\n"
    )
    out_dir = tmp_path / "out"
    code, out = _run([*_args(keras_converted, out_dir, profile="tiny_mcu"), "--profile", "x86_gateway",
                      "--profiles-dir", str(pdir)])
    assert code == 3, out
    assert "tiny_mcu: no artifact fits" in out and "artifact size" in out and "over by" in out
    assert (out_dir / "x86_gateway" / "manifest.json").exists()  # the profile that fits is still written
    assert not (out_dir / "tiny_mcu").exists()
    assert "No artifact fits this profile" in (out_dir / "report.md").read_text()


def test_force_replaces_atomically(keras_converted: Converted, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    assert _run(_args(keras_converted, out_dir))[0] == 0
    first = (out_dir / "x86_gateway" / "manifest.json").read_text()
    code, _ = _run([*_args(keras_converted, out_dir), "--force", "--version", "2"])
    assert code == 0
    assert '"version":2' in (out_dir / "x86_gateway" / "manifest.json").read_text() and first != ""
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_validation_without_labels_says_agreement_only(keras_converted: Converted, tmp_path: Path) -> None:
    """A classifier's validation data without `y`: no accuracy is claimed (never 0 %), the report and the CLI
    say that the artifacts were compared with the float model only."""
    with np.load(keras_converted.validation) as data:
        x = data["x"]
    val = tmp_path / "val.npz"
    np.savez(val, x=x)
    out = tmp_path / "out"
    code, said = _run(_args(keras_converted, out, val=val))
    assert code == 0, said
    assert "No labels in the validation data (no 'y'): accuracy is not measured" in said
    report = (out / "report.md").read_text()
    assert "No labels in the validation data" in report
    assert re.search(r"(?<![0-9])0\.00%", report) is None  # no accuracy of 0 % anywhere (100.00% agreement is fine)
