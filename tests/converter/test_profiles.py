"""Firmware profiles: bundled ones load, bad ones are rejected naming the field, the CLI prints them."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgefleet.cli import cli
from firmware_profiles import ProfileError, get_profile, load_profile_file, load_profiles
from firmware_profiles.loader import BUNDLED_DIR

EXPECTED = {"raspberry_pi_4", "raspberry_pi_5", "coral_devboard", "jetson_orin_nano", "nxp_imx8mp",
            "x86_gateway", "esp32_s3"}


def test_bundled_profiles() -> None:
    profiles = load_profiles()
    assert set(profiles) >= EXPECTED
    coral = profiles["coral_devboard"]
    assert coral.kinds == ["tflite_int8"] and coral.io_dtype == "int8" and coral.accelerator == "edgetpu"
    assert profiles["jetson_orin_nano"].kinds[0] == "onnx_fp16"
    assert profiles["x86_gateway"].kinds[0] == "onnx_int8"
    esp = profiles["esp32_s3"]
    assert esp.runtimes == ["tflite_micro"] and esp.budgets.arena_bytes and esp.budgets.max_artifact_bytes <= 2**21


def _write(tmp_path: Path, base: str, **changes: object) -> Path:
    data = tomllib.loads((BUNDLED_DIR / f"{base}.toml").read_text())
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            data[outer] = {**data[outer], inner: value}
        elif value is None:
            data.pop(key)
        else:
            data[key] = value
    lines = []
    for k, v in data.items():
        lines.append(f"{k} = {_toml(v)}")
    path = tmp_path / f"{base}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(v: object) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml(x)}" for k, x in v.items()) + " }"
    return json.dumps(v)


@pytest.mark.parametrize(
    ("base", "changes", "field"),
    [
        ("raspberry_pi_4", {"colour": "red"}, "colour: unknown field"),
        ("raspberry_pi_4", {"budgets.max_flash": 3}, "budgets.max_flash: unknown field"),
        ("raspberry_pi_4", {"threads": 0}, "threads"),
        ("raspberry_pi_4", {"formats": ["tflite", "onnx"]}, "formats: onnx needs runtime onnxruntime"),
        ("coral_devboard", {"quantizations": ["int8", "fp32"]}, "quantizations: the Edge TPU runs only"),
        ("coral_devboard", {"io_dtype": "float32"}, "io_dtype: the Edge TPU needs int8"),
        ("esp32_s3", {"budgets.arena_bytes": None}, "budgets.arena_bytes: required for tflite_micro"),
        ("esp32_s3", {"budgets.arena_bytes": 8388608}, "budgets.arena_bytes: arena plus model exceed"),
        ("x86_gateway", {"budgets.max_artifact_bytes": 2**40}, "budgets.max_artifact_bytes: larger than max_ram"),
        ("x86_gateway", {"quantizations": ["int8", "int8"]}, "quantizations: listed twice"),
        ("raspberry_pi_4", {"io_dtype": "uint8"}, "io_dtype: uint8 I/O needs quantizations = [int8]"),
        ("raspberry_pi_4", {"arch": "sparc"}, "arch"),
        ("raspberry_pi_4", {"name": "other"}, "name: 'other' must match the file name"),
    ],
)
def test_bad_profile_names_the_field(tmp_path: Path, base: str, changes: dict[str, object], field: str) -> None:
    fixed = {k: v for k, v in changes.items() if not (k.startswith("budgets.") and v is None)}
    path = _write(tmp_path, base, **fixed)
    if changes.get("budgets.arena_bytes", 0) is None:
        text = path.read_text().replace("arena_bytes = 262144, ", "")
        path.write_text(text)
    with pytest.raises(ProfileError) as err:
        load_profile_file(path)
    assert field in str(err.value)
    assert path.name in str(err.value)


def test_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("name = \n")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile_file(path)


def test_user_dir_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, "raspberry_pi_4", threads=2)
    assert get_profile("raspberry_pi_4", path.parent).threads == 2
    assert get_profile("raspberry_pi_4").threads == 4


def test_cli_list_and_show() -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["profiles", "list"], terminal_width=200)
    assert res.exit_code == 0
    for name in EXPECTED:
        assert name in res.output
    res = runner.invoke(cli, ["profiles", "show", "esp32_s3"], terminal_width=200)
    assert res.exit_code == 0 and "tflite_micro" in res.output and "256 KiB" in res.output
    res = runner.invoke(cli, ["profiles", "show", "esp32_s3", "--json"])
    assert json.loads(res.output)["budgets"]["arena_bytes"] == 262144
    res = runner.invoke(cli, ["profiles", "show", "nope"])
    assert res.exit_code == 1 and res.output.strip().splitlines() == [
        "Error: unknown profile 'nope'; known: " + ", ".join(sorted(load_profiles()))
    ]
