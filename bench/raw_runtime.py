"""The raw runtimes of bench/agent_overhead.py, and its RSS floor when run as a script.

`raw_runner` sets a runtime up as the agent's plugins do (one thread; LiteRT resized on a new batch size
only) with none of the agent around it: the in-process baseline of the benchmark. Run as
`python bench/raw_runtime.py MODEL onnx|tflite [MODULE ...]` it is the floor the daemon's RSS is set against:
numpy, the runtime and the model, the MODULEs imported first (the libraries the agent is built on), run at
batch 8 and 1, the free heap trimmed as the daemon trims its own; it prints VmRSS / RssAnon / RssFile (MB)
as one JSON object. It imports nothing else (numpy.random neither: the daemon never loads it).
"""

from __future__ import annotations

import ctypes
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def raw_runner(path: Path, kind: str) -> Callable[[np.ndarray], Any]:
    """run(x) -> the first output, straight through onnxruntime's InferenceSession or LiteRT's Interpreter."""
    if kind == "onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run_onnx(x: np.ndarray) -> Any:
            return session.run(None, {name: x})[0]

        return run_onnx
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=1)
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    shape: list[tuple[int, ...]] = [()]

    def run_litert(x: np.ndarray) -> Any:
        if shape[0] != x.shape:  # as the agent's LiteRT plugin: resize on a new batch size only
            interp.resize_tensor_input(inp["index"], x.shape)
            interp.allocate_tensors()
            shape[0] = x.shape
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        return interp.get_tensor(outp["index"])

    return run_litert


def floor(path: Path, kind: str, modules: list[str]) -> dict[str, float]:
    for module in modules:
        importlib.import_module(module)
    run = raw_runner(path, kind)
    x = np.linspace(-2, 2, 8 * 256, dtype=np.float32).reshape(8, 256)
    for batch in (x, x[:1], x):
        for _ in range(200):
            run(batch)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {k: int(status[k].split()[0]) / 1024 for k in ("VmRSS", "RssAnon", "RssFile")}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the wire contract's modules, as the daemon has them
    print(json.dumps(floor(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])))
