"""Sources versioned in DVC (a real local git + DVC repository with a local remote), and Edge TPU compilation
said honestly (a stand-in compiler, since Google's edgetpu_compiler cannot be installed here)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgefleet.cli import cli
from protocol import layout
from protocol.manifest import Manifest
from tests.agent.builders import onnx_linear, tflite_models

pytestmark = [pytest.mark.slow]


def _sh(cwd: Path, *args: str) -> str:
    return subprocess.run(args, cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _dvc(cwd: Path, *args: str) -> str:
    return _sh(cwd, sys.executable, "-m", "dvc", *args)


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("dvc")
    repo, remote = root / "repo", root / "remote"
    repo.mkdir()
    remote.mkdir()
    _sh(repo, "git", "init", "-q")
    _sh(repo, "git", "config", "user.email", "ci@example.com")
    _sh(repo, "git", "config", "user.name", "ci")
    _dvc(repo, "init", "-q")
    _dvc(repo, "remote", "add", "-d", "local", str(remote))
    (repo / "models").mkdir()
    versions = {}
    for tag, seed in (("v1", 1), ("v2", 2)):
        model = onnx_linear(repo / "models" / "model.onnx", seed=seed)
        versions[tag] = model.read_bytes()
        _dvc(repo, "add", "-q", "models/model.onnx")
        _sh(repo, "git", "add", "-A")
        _sh(repo, "git", "commit", "-q", "-m", f"model {tag}")
        _sh(repo, "git", "tag", tag)
        _dvc(repo, "push", "-q")
    # Only the remote holds the data now: the converter must read it through DVC, not the work tree.
    _sh(repo, "rm", "-rf", ".dvc/cache", "models/model.onnx")
    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    np.save(root / "x.npy", x)
    return {"repo": repo, "versions": versions, "x": root / "x.npy", "root": root,
            "v1_commit": _sh(repo, "git", "rev-parse", "v1")}


def test_convert_reads_a_revision_through_dvc(dvc_repo: dict[str, object]) -> None:
    repo, root, x = Path(str(dvc_repo["repo"])), Path(str(dvc_repo["root"])), str(dvc_repo["x"])
    versions: dict[str, bytes] = dvc_repo["versions"]  # type: ignore[assignment]
    out = root / "out"
    args = ["convert", "models/model.onnx", "--dvc-repo", str(repo), "--rev", "v1", "--profile", "x86_gateway",
            "--calibration", x, "--validation", x, "--out", str(out), "--task", "regression", "--latency-runs", "10",
            "--no-cloud"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    m = Manifest.from_json((out / "x86_gateway" / layout.MANIFEST_FILE).read_text())
    shipped = (out / "x86_gateway" / m.artifact.file).read_bytes()
    assert shipped == versions["v1"] != versions["v2"]
    assert m.source is not None
    assert (m.source.kind, m.source.dvc_repo, m.source.dvc_rev, m.source.dvc_path) == (
        "onnx", str(repo), "v1", "models/model.onnx"
    )
    assert m.source.dvc_md5 == hashlib.md5(versions["v1"]).hexdigest()
    assert m.source.dvc_commit == dvc_repo["v1_commit"]
    assert m.source.sha256 == hashlib.sha256(versions["v1"]).hexdigest()
    report = json.loads((out / layout.REPORT_JSON).read_text())
    assert report["source_ref"]["dvc_md5"] == m.source.dvc_md5
    assert f"from DVC: `models/model.onnx` in {repo} at v1" in (out / layout.REPORT_MD).read_text()


@pytest.mark.parametrize(
    ("path", "rev", "said"),
    [
        ("models/model.onnx", "v9", "models/model.onnx in DVC repo {repo} at v9: "),
        ("models/missing.onnx", "v1", "models/missing.onnx in DVC repo {repo} at v1: no such file at that revision"),
    ],
)
def test_bad_revision_or_path_is_one_line(dvc_repo: dict[str, object], path: str, rev: str, said: str) -> None:
    repo, root, x = dvc_repo["repo"], Path(str(dvc_repo["root"])), str(dvc_repo["x"])
    args = ["convert", path, "--dvc-repo", str(repo), "--rev", rev, "--profile", "x86_gateway", "--calibration", x,
            "--validation", x, "--out", str(root / "bad")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1
    last = res.output.strip().splitlines()
    assert len([ln for ln in last if ln.startswith("Error: ")]) == 1
    assert last[-1].startswith("Error: " + said.format(repo=repo))
    assert not (root / "bad").exists()


def _coral_args(folder: Path, model: Path) -> list[str]:
    x = np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)
    np.save(folder / "x.npy", x)
    return ["convert", str(model), "--profile", "coral_devboard", "--calibration", str(folder / "x.npy"),
            "--validation", str(folder / "x.npy"), "--out", str(folder / "out"), "--task", "regression",
            "--latency-runs", "10", "--no-cloud"]


def test_without_edgetpu_compiler_the_report_says_it_runs_on_the_cpu(tmp_path: Path) -> None:
    model = tflite_models(tmp_path)["int8"]
    env = {"PATH": "/usr/bin:/bin"}  # no edgetpu_compiler (it cannot be installed on this host at all)
    res = CliRunner().invoke(cli, _coral_args(tmp_path, model), env=env)
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "coral_devboard: not Edge-TPU compiled: edgetpu_compiler is not installed on this host" in said
    m = Manifest.from_json((tmp_path / "out" / "coral_devboard" / layout.MANIFEST_FILE).read_text())
    assert m.report.chosen.compiled_for is None
    assert "runs on the Coral's CPU, not its TPU" in (tmp_path / "out" / layout.REPORT_MD).read_text()
    shown = CliRunner().invoke(cli, ["profiles", "show", "coral_devboard"], env=env)
    assert "not Edge-TPU compiled" in " ".join(shown.output.split())


def test_with_edgetpu_compiler_the_coral_gets_its_output(tmp_path: Path) -> None:
    """A STAND-IN for Google's edgetpu_compiler (not installable here): it checks the arguments the converter
    passes, as the real one takes them, and writes `<name>_edgetpu.tflite` as the real one names its output."""
    model = tflite_models(tmp_path)["int8"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "edgetpu_compiler"
    fake.write_text(
        "#!/bin/sh\n"
        '[ "$1" = "-s" ] && [ "$2" = "-o" ] || { echo "usage: edgetpu_compiler -s -o DIR MODEL" >&2; exit 2; }\n'
        'out="$3"; src="$4"; base=$(basename "$src" .tflite)\n'
        'cat "$src" > "$out/${base}_edgetpu.tflite"; printf "EDGETPU" >> "$out/${base}_edgetpu.tflite"\n'
        'echo "Model compiled successfully"\n'
    )
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin"}
    res = CliRunner().invoke(cli, _coral_args(tmp_path, model), env=env)
    assert res.exit_code == 0, res.output
    m = Manifest.from_json((tmp_path / "out" / "coral_devboard" / layout.MANIFEST_FILE).read_text())
    shipped = (tmp_path / "out" / "coral_devboard" / m.artifact.file).read_bytes()
    assert shipped == model.read_bytes() + b"EDGETPU"
    assert m.report.chosen.compiled_for == "edgetpu" and m.artifact.size == len(shipped)
    assert f"Edge-TPU compiled by {fake}" in " ".join(res.output.split())
    # The agent runs such an artifact through Coral's delegate only: without it, one line says what is missing.
    from agent.errors import ModelLoadError
    from agent.model import LoadedModel

    with pytest.raises(ModelLoadError, match=r"compiled for the Edge TPU, and the Edge TPU runtime"):
        LoadedModel.from_file(tmp_path / "out" / "coral_devboard" / m.artifact.file, manifest=m)
