"""PyTorch sources: TorchScript (`torch.jit.save`), a whole pickled `nn.Module` (`torch.save`, loaded only with
`--trust-pickle`), or an `ExportedProgram` (`torch.export.save`, `.pt2`)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import ModelLoadError
from converter.sources.base import ONNX_OPSET, SourceModel, dims
from protocol.manifest import TensorSpec

TORCHSCRIPT_TFLITE = (
    "TorchScript cannot be converted to TFLite (litert-torch needs the nn.Module: save it with torch.save(module) "
    "or torch.export.save(torch.export.export(module, args), 'model.pt2'))"
)
TORCH_DTYPES = {"float32": "float32", "float64": "float64", "float16": "float16", "int64": "int64",
                "int32": "int32", "int8": "int8", "uint8": "uint8", "bool": "bool"}


def _is_torchscript(path: Path) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return any(n.split("/", 1)[-1].startswith("code/") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _output_names(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _outputs(out: Any) -> list[Any]:
    if isinstance(out, dict):
        return list(out.values())
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _module_source(kind: str, path: Path, module: Any, inputs: list[TensorSpec], max_batch: int | None,
                   tflite: bool) -> SourceModel:
    import torch

    names = [s.name for s in inputs]
    with torch.no_grad():
        sample = [torch.from_numpy(np.zeros([1 if d is None else d for d in s.shape], s.dtype)) for s in inputs]
        output_names = _output_names(len(_outputs(module(*sample))))

    def predict(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with torch.no_grad():
            out = module(*[torch.from_numpy(np.ascontiguousarray(x[n])) for n in names])
        return {n: o.detach().numpy() for n, o in zip(output_names, _outputs(out), strict=True)}

    def to_onnx() -> bytes:
        buf = io.BytesIO()
        batched = {n: {0: "batch"} for n, s in zip(names, inputs, strict=True) if s.shape and s.shape[0] is None}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter warns it is legacy; it needs no onnxscript
            torch.onnx.export(
                module, tuple(sample), buf, input_names=names, output_names=output_names,
                dynamic_axes={**batched, **{o: {0: "batch"} for o in output_names}} if batched else None,
                opset_version=ONNX_OPSET, dynamo=False,
            )
        return buf.getvalue()

    route = "litert_torch" if tflite else None
    return SourceModel(kind, path, inputs, output_names, predict, max_batch=max_batch,  # type: ignore[arg-type]
                       tflite_route=route, tflite_refusal="" if tflite else TORCHSCRIPT_TFLITE,
                       torch_module=module, onnx_factory=to_onnx)


def load_torch(path: Path, input_shape: list[int] | None, trust_pickle: bool) -> SourceModel:
    """TorchScript or a pickled nn.Module (`.pt`, `.pth`); needs an input shape hint."""
    import torch

    if _is_torchscript(path):
        module = torch.jit.load(str(path), map_location="cpu")
        kind = "torchscript"
    else:
        module = _load_pickled_module(path, trust_pickle)
        kind = "torch"
    module.eval()
    hint = input_shape or getattr(module, "edgefleet_input_shape", None)
    if hint is None:
        raise ModelLoadError(
            f"{path.name}: pass --input-shape (one sample's shape, e.g. 1,28,28) or set "
            "`module.edgefleet_input_shape` before saving"
        )
    inputs = [TensorSpec(name="input", shape=[None, *[int(d) for d in hint]], dtype="float32")]
    return _module_source(kind, path, module, inputs, None, tflite=kind == "torch")


def _load_pickled_module(path: Path, trust_pickle: bool) -> Any:
    import pickle

    import torch

    if not trust_pickle:
        try:
            held = torch.load(str(path), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise ModelLoadError(
                f"{path.name}: a pickled nn.Module runs code when it is loaded; pass --trust-pickle if you trust "
                "where it came from (or ship TorchScript or a torch.export .pt2, which load without running code)"
            ) from None
    else:
        held = torch.load(str(path), map_location="cpu", weights_only=False)
    if not isinstance(held, torch.nn.Module):
        what = "a state dict (weights only)" if isinstance(held, dict) else f"a {type(held).__name__}"
        raise ModelLoadError(
            f"{path.name}: holds {what}, not a module: save the module itself (torch.save(module)) "
            "or an ExportedProgram (torch.export.save)"
        )
    return held


def load_exported(path: Path) -> SourceModel:
    """A `torch.export` ExportedProgram: its example inputs give names and shapes (no --input-shape needed)."""
    import torch

    ep = torch.export.load(str(path))
    user_inputs = list(ep.graph_signature.user_inputs)
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    inputs = []
    for name in user_inputs:
        val = placeholders[name].meta.get("val")
        if val is None:
            raise ModelLoadError(f"{path.name}: input {name!r} has no recorded shape; re-export with torch.export")
        shape = dims([d if isinstance(d, int) else -1 for d in val.shape])
        dtype = TORCH_DTYPES.get(str(val.dtype).removeprefix("torch."))
        if dtype is None:
            raise ModelLoadError(f"{path.name}: input {name!r} is {val.dtype}; EdgeFleet ships numeric tensors only")
        inputs.append(TensorSpec(name=name, shape=shape, dtype=dtype))  # type: ignore[arg-type]
    module = ep.module()
    try:  # an exported GraphModule refuses .train()/.eval(), which the ONNX exporter calls
        from torchao.quantization.pt2e import allow_exported_model_train_eval

        allow_exported_model_train_eval(module)
    except ImportError:  # torchao comes with litert-torch; without it only the ONNX export is lost
        pass
    static_batch = any(s.shape and s.shape[0] is not None for s in inputs)
    return _module_source("torch_export", path, module, inputs, 1 if static_batch else None, tflite=True)
