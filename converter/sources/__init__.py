"""Load a trained model into a float reference, whatever it is: Keras, SavedModel, ONNX, PyTorch (TorchScript, a
pickled nn.Module, an ExportedProgram), scikit-learn, or a ready-made TFLite file; from disk or from DVC."""

from __future__ import annotations

import hashlib
from pathlib import Path

from converter.errors import ModelLoadError
from converter.sources.base import (
    ONNX_OPSET,
    SourceKind,
    SourceModel,
    first_line,
    quiet_tensorflow,
    silenced,
)
from protocol.manifest import SourceRef

SUFFIXES: dict[str, SourceKind] = {
    ".keras": "keras", ".h5": "keras", ".onnx": "onnx", ".pt": "torch", ".pth": "torch", ".torchscript": "torch",
    ".pt2": "torch_export", ".pkl": "sklearn", ".pickle": "sklearn", ".joblib": "sklearn", ".tflite": "tflite",
}


def detect_kind(path: Path) -> SourceKind:
    if path.is_dir():
        if (path / "saved_model.pb").exists():
            return "savedmodel"
        raise ModelLoadError(f"{path}: a directory but not a SavedModel (no saved_model.pb)")
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        known = ", ".join(sorted(SUFFIXES))
        raise ModelLoadError(f"{path}: unknown model type {path.suffix.lower()!r} (use {known} or a SavedModel dir)")
    return kind


def load_source(path: Path, input_shape: list[int] | None = None, *, trust_pickle: bool = False,
                signature: str | None = None) -> SourceModel:
    """Load any supported model; `ModelLoadError` with one readable line when it cannot.

    `input_shape` (per sample, no batch) is needed only for TorchScript and pickled nn.Modules that do not
    carry an `edgefleet_input_shape` attribute. `trust_pickle` allows formats that run code when loaded.
    `signature` picks the signature of a ready-made TFLite file that has several.
    """
    kind = detect_kind(path)
    if signature is not None and kind != "tflite":
        raise ModelLoadError(f"{path.name}: --signature is for ready-made .tflite files with several signatures")
    try:
        with silenced():
            source = _load(kind, path, input_shape, trust_pickle, signature)
    except ModelLoadError:
        raise
    except Exception as e:  # every framework raises its own types for a corrupt file
        what = "torch" if kind in ("torch", "torch_export", "torchscript") else kind
        raise ModelLoadError(f"{path.name}: cannot load {what} model: {type(e).__name__}: {first_line(e)}") from e
    if source.max_batch is None and any(s.shape and s.shape[0] == 1 for s in source.inputs):
        source.max_batch = 1
    if source.ref is None:
        source.ref = SourceRef(kind=source.kind, sha256=_sha256(path))
    return source


def _load(kind: SourceKind, path: Path, input_shape: list[int] | None, trust_pickle: bool,
          signature: str | None) -> SourceModel:
    if kind in ("keras", "savedmodel"):
        from converter.sources.tf import load_keras, load_savedmodel

        return load_keras(path) if kind == "keras" else load_savedmodel(path)
    if kind == "onnx":
        from converter.sources.onnx import load_onnx

        return load_onnx(path)
    if kind == "torch":
        from converter.sources.torch import load_torch

        return load_torch(path, input_shape, trust_pickle)
    if kind == "torch_export":
        from converter.sources.torch import load_exported

        return load_exported(path)
    if kind == "sklearn":
        from converter.sources.sklearn import load_sklearn

        return load_sklearn(path, trust_pickle)
    from converter.sources.tflite import load_tflite

    return load_tflite(path, signature)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f.relative_to(path).as_posix().encode())
            h.update(f.read_bytes())
    else:
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


__all__ = ["ONNX_OPSET", "SourceModel", "detect_kind", "load_source", "quiet_tensorflow", "silenced"]
