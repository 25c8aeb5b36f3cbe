"""Cloud-serving exports of the float model: TF Serving SavedModel, TorchServe .mar, Triton/KServe ONNX."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from converter.errors import ExportError
from converter.sources import SourceModel, quiet_tensorflow, silenced
from protocol import layout

HANDLER = Path(__file__).with_name("torchserve_handler.py")


def export_tfserving(source: SourceModel, out: Path, name: str, version: int) -> Path:
    """`out/cloud/tfserving/NAME/VERSION/saved_model.pb` with a `serving_default` signature."""
    target = out / layout.TFSERVING_DIR / name / str(version)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if source.kind == "savedmodel":
            shutil.copytree(source.path, target)
        else:
            quiet_tensorflow()
            with silenced():
                source.tf_model.export(str(target), verbose=False)
    except Exception as e:
        raise ExportError(f"TF Serving export failed: {type(e).__name__}: {str(e)[:300]}") from e
    if not (target / "saved_model.pb").exists():
        raise ExportError(f"TF Serving export wrote no saved_model.pb under {target}")
    return target


def export_torchserve(source: SourceModel, out: Path, name: str, version: int) -> Path:
    """`out/cloud/torchserve/NAME.mar` (TorchScript + EdgeFleet JSON handler) via torch-model-archiver."""
    import torch

    dest = out / layout.TORCHSERVE_DIR
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgefleet-mar-") as tmp:
        scripted = Path(tmp, "model.pt")
        module = source.torch_module
        if not isinstance(module, torch.jit.ScriptModule):
            sample = torch.zeros([1, *source.input_shapes["input"][1:]], dtype=torch.float32)
            module = torch.jit.trace(module, sample)
        torch.jit.save(module, str(scripted))
        cmd = [
            sys.executable, "-m", "model_archiver.model_packaging",
            "--model-name", name, "--version", str(version), "--serialized-file", str(scripted),
            "--handler", str(HANDLER), "--export-path", str(dest), "--force",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    mar = dest / f"{name}.mar"
    if done.returncode != 0 or not mar.exists():
        raise ExportError(f"torch-model-archiver failed: {(done.stderr or done.stdout).strip()[-300:]}")
    return mar


def export_triton(onnx_fp32: bytes, out: Path, name: str, version: int) -> Path:
    """A Triton / KServe v2 model repository: `out/cloud/triton/NAME/VERSION/model.onnx` + config.pbtxt."""
    repo = out / layout.TRITON_DIR / name
    (repo / str(version)).mkdir(parents=True, exist_ok=True)
    (repo / str(version) / "model.onnx").write_bytes(onnx_fp32)
    (repo / "config.pbtxt").write_text(f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n')
    return repo
