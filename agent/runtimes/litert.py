"""LiteRT plugin: `ai_edge_litert`, falling back to `tflite_runtime` when only that is installed."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from agent.errors import ModelLoadError, RuntimeUnavailable
from agent.runtimes.base import Array, TensorInfo
from protocol.signatures import SignatureChoiceError, choose_signature

log = logging.getLogger(__name__)


@contextlib.contextmanager
def native_info_to_debug() -> Iterator[None]:
    """LiteRT's C++ logger writes `INFO: Created TensorFlow Lite XNNPACK delegate for CPU.` straight to file
    descriptor 2 when the first interpreter is made: runtime chatter on a CLI's stderr. While this runs, fd 2
    goes to a temporary file; afterwards its `INFO:` lines go to this module's DEBUG log and everything else
    (warnings, errors, other threads' writes) back to stderr, in order."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (a closed stderr): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = []
            for line in caught.read().splitlines(keepends=True):
                if line.startswith(b"INFO: "):
                    log.debug("LiteRT: %s", line.decode(errors="replace").strip())
                else:
                    kept.append(line)
            if kept:
                os.write(2, b"".join(kept))


class LiteRTConfig(BaseModel):
    """Options for the LiteRT runtime."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["litert"] = "litert"
    threads: int = Field(default=1, ge=1, le=64)
    # Which signature to run in a model with several; None: the only one, else `serving_default`.
    signature: str | None = None
    # An artifact compiled for the Edge TPU runs through Coral's delegate (libedgetpu, installed on the device).
    edgetpu: bool = False


EDGETPU_LIBRARY = "libedgetpu.so.1"


def _delegates(interpreter_cls: Any, config: LiteRTConfig, path: Path) -> list[Any] | None:
    if not config.edgetpu:
        return None
    module = sys.modules[interpreter_cls.__module__]
    try:
        ctypes.CDLL(EDGETPU_LIBRARY)  # first: a Delegate whose library fails to load trips over itself when freed
        return [module.load_delegate(EDGETPU_LIBRARY)]
    except (ValueError, OSError, RuntimeError) as e:
        raise ModelLoadError(
            f"{path.name} is compiled for the Edge TPU, and the Edge TPU runtime ({EDGETPU_LIBRARY}) cannot be loaded "
            f"here: {str(e).splitlines()[0] if str(e) else type(e).__name__} (install Coral's libedgetpu1-std)"
        ) from e


def _interpreter_class() -> Any:
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter

        return Interpreter
    except ImportError as e:
        raise RuntimeUnavailable("no TFLite runtime installed: pip install ai-edge-litert (or tflite-runtime)") from e


def _info(detail: dict[str, Any], name: str) -> TensorInfo:
    sig = detail.get("shape_signature")
    dims = sig if sig is not None and len(sig) else detail["shape"]
    shape = tuple(None if int(d) < 0 else int(d) for d in dims)
    scale, zero = detail.get("quantization", (0.0, 0))
    dtype = np.dtype(detail["dtype"])
    if dtype.kind not in "biuf":
        raise ModelLoadError(f"tensor {name!r}: unsupported dtype {dtype} for an input or output")
    quantized = float(scale) > 0 and dtype.kind in "iu"
    return TensorInfo(
        name=name,
        shape=shape,
        dtype=dtype,
        scale=float(scale) if quantized else None,
        zero_point=int(zero) if quantized else None,
        aliases=(str(detail["name"]),) if str(detail["name"]) != name else (),
    )


class LiteRTRuntime:
    """A TFLite flatbuffer in a LiteRT Interpreter; resizes on a new shape; one call at a time.

    Tensors are named by the chosen signature's keys (the names the model's author gave), with the
    flatbuffer's tensor names accepted as aliases. The primary subgraph runs through the interpreter's
    own tensor calls; a signature on another subgraph through its SignatureRunner (which resizes and
    allocates on every call: such models are rare and small).
    """

    def __init__(self, path: Path, config: LiteRTConfig) -> None:
        interpreter_cls = _interpreter_class()
        try:
            with native_info_to_debug():
                self._interp = interpreter_cls(
                    model_path=str(path), num_threads=config.threads,
                    experimental_delegates=_delegates(interpreter_cls, config, path),
                )
                # Allocated before any SignatureRunner exists: the interpreter refuses while one holds its wrapper.
                self._interp.allocate_tensors()
            try:
                self.signature = choose_signature(list(self._interp.get_signature_list()), config.signature)
            except SignatureChoiceError as e:
                raise ModelLoadError(f"{path.name}: {e}") from e
            runner = self._interp.get_signature_runner(self.signature) if self.signature else None
            in_items, out_items = self._details(runner)
            # The primary subgraph runs through the interpreter's own calls; dropping the runner lets it resize.
            self._runner = runner if runner is not None and getattr(runner, "_subgraph_index", 0) != 0 else None
        except ModelLoadError:
            raise
        except (ValueError, RuntimeError, OSError) as e:
            hint = ""
            if interpreter_cls.__module__.startswith("tflite_runtime") and "find op for builtin opcode" in str(e):
                hint = " with tflite-runtime, whose last release predates this op version (pip install ai-edge-litert)"
            raise ModelLoadError(f"{path.name}: LiteRT cannot load it{hint}: {e}") from e
        self._lock = threading.Lock()
        self.inputs = [_info(d, name) for name, d in in_items]
        self.outputs = [_info(d, name) for name, d in out_items]
        pairs = list(zip(self.inputs, (d for _, d in in_items), strict=True))
        self._in_index = {t.name: int(d["index"]) for t, d in pairs}
        self._out_index = [(t.name, int(d["index"])) for t, (_, d) in zip(self.outputs, out_items, strict=True)]
        self._shapes = {t.name: tuple(int(x) for x in d["shape"]) for t, d in pairs}
        self._one_output = self._out_index[0] if len(self._out_index) == 1 else None

    def _details(self, runner: Any) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[str, dict[str, Any]]]]:
        """(name, detail) of the inputs and outputs to run: a signature's on its own subgraph, else the primary
        subgraph's, named by its signature when it has one."""
        if runner is None:
            return ([(str(d["name"]), d) for d in self._interp.get_input_details()],
                    [(str(d["name"]), d) for d in self._interp.get_output_details()])
        ins, outs = runner.get_input_details(), runner.get_output_details()
        if getattr(runner, "_subgraph_index", 0) != 0:
            return list(ins.items()), list(outs.items())
        names = {int(d["index"]): n for n, d in (*ins.items(), *outs.items())}
        return ([(names.get(int(d["index"]), str(d["name"])), d) for d in self._interp.get_input_details()],
                [(names.get(int(d["index"]), str(d["name"])), d) for d in self._interp.get_output_details()])

    def run(self, feeds: dict[str, Array]) -> dict[str, Array]:
        """Set inputs (resizing when the shape changed), invoke, copy outputs out."""
        with self._lock:
            if self._runner is not None:
                try:
                    out: dict[str, Array] = self._runner(**feeds)
                except (ValueError, RuntimeError) as e:
                    raise ModelLoadError(f"LiteRT refused the inputs: {e}") from e
                return {name: np.array(out[name]) for name, _ in self._out_index}
            interp, shapes, index_of = self._interp, self._shapes, self._in_index  # locals: this runs per call
            for name, value in feeds.items():
                if value.shape != shapes[name]:
                    self._resize(feeds)
                    break
            try:
                for name, value in feeds.items():
                    interp.set_tensor(index_of[name], value)
                interp.invoke()
            except (ValueError, RuntimeError) as e:  # a shape the graph cannot take, found while it runs
                raise ModelLoadError(f"LiteRT refused the inputs: {e}") from e
            if self._one_output is not None:  # most models: a dict display, no loop
                name, index = self._one_output
                return {name: interp.get_tensor(index)}
            return {name: interp.get_tensor(index) for name, index in self._out_index}

    def _resize(self, feeds: dict[str, Array]) -> None:
        """Resize the inputs whose shape changed and allocate again (a new batch size; rare)."""
        for name, value in feeds.items():
            if value.shape != self._shapes[name]:
                self._interp.resize_tensor_input(self._in_index[name], list(value.shape), strict=False)
                self._shapes[name] = value.shape
        try:
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise ModelLoadError(f"LiteRT cannot resize to these input shapes: {e}") from e
