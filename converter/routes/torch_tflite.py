"""PyTorch -> TFLite with litert-torch (torch.export underneath): the module is wrapped so the signature keeps
the source's input and output names, converted at batch 1 (litert-torch 0.10 cannot export a dynamic batch)."""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import numpy as np

from converter.data import Dataset
from converter.errors import ConversionFailed
from converter.routes.tflite_quant import quantize_tflite
from converter.sources.base import SourceModel, silenced
from protocol.manifest import Quantization

SIGNATURE = "serving_default"


def _quiet_imports() -> Any:
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "0")  # its progress lines go to stdout
    logging.getLogger("torchao").setLevel(logging.ERROR)
    import torch  # noqa: F401  (first: importing torch resets the loggers set below)

    for name in ("torch.utils._pytree", "torch.fx.experimental.symbolic_shapes"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with silenced():
        import litert_torch
    return litert_torch


def _named(module: Any, inputs: list[str], outputs: list[str]) -> Any:
    """`module` behind keyword inputs and a dict of outputs: litert-torch names the signature after them."""
    import torch

    class NamedIO(torch.nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, **kwargs: Any) -> dict[str, Any]:
            out = self.inner(*[kwargs[n] for n in inputs])
            values = list(out.values()) if isinstance(out, dict) else out if isinstance(out, (list, tuple)) else [out]
            return dict(zip(outputs, values, strict=True))

    wrapped = NamedIO()
    wrapped.training = False
    return wrapped


def build_torch_tflite(source: SourceModel, quant: Quantization, calibration: Dataset, io_dtype: str) -> bytes:
    """One TFLite flatbuffer of the module; fp16 / dynamic / int8 quantise the float one (ai-edge-quantizer)."""
    import torch

    litert_torch = _quiet_imports()
    names = [s.name for s in source.inputs]
    sample = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in calibration.take(0, 1).items()}
    try:
        with silenced(), torch.no_grad():
            edge = litert_torch.convert(_named(source.torch_module, names, source.output_names), sample_kwargs=sample)
            fp32 = bytes(edge.model_content())
    except Exception as e:  # jax, torch.export and lowering errors of every type
        raise ConversionFailed(f"litert-torch: {short_error(e)}") from e
    if quant is Quantization.FP32:
        return fp32
    return quantize_tflite(fp32, quant, calibration, io_dtype, SIGNATURE, {n: n for n in names})


def short_error(e: BaseException) -> str:
    """One line naming the op being lowered when the error says which (`aten._unique2.default: ...`)."""
    import torch.fx

    op = None
    tb = e.__traceback__
    while tb is not None:
        for value in (tb.tb_frame.f_locals.get("n"), tb.tb_frame.f_locals.get("node")):
            if isinstance(value, torch.fx.Node) and value.op == "call_function":
                op = str(value.target)
        tb = tb.tb_next
    text = str(e)
    if op is None:
        found = re.search(r"target=torch\.ops\.([\w.]+)", text)
        op = found.group(1) if found else None
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"op {op}: {type(e).__name__}: {first[:200]}" if op else f"{type(e).__name__}: {first[:240]}"
