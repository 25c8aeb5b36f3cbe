"""Rewrite an ONNX graph into a form onnx2tf converts, computing the same function.

Real exporters leave graphs that onnx2tf 1.28 trips over (each found on a model of the test corpus):
dynamic shapes it cannot resolve (tf2onnx's Shape -> Gather -> Reshape chains), GlobalAveragePool used as a
mean over the last axis (tf2onnx's LayerNormalization), constant Slices with unsorted or negative axes, graph
input names with `:` in them, nodes without names (Paddle2ONNX). Every step here keeps the outputs as they
were; the route checks the converted model against onnxruntime anyway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

INT_MAX = 2**31 - 1


@dataclass(frozen=True)
class Prepared:
    model: bytes
    renamed: dict[str, str]  # source input name -> its name in the prepared graph


def prepare(fp32: bytes, shapes: dict[str, list[int]]) -> Prepared:
    """The graph with `shapes` (one sample's, batch 1) fixed, simplified, and rewritten as the module says."""
    import onnx

    model = _static(onnx.load_from_string(fp32), shapes)
    ranks = _ranks(model)
    _pools_as_reductions(model, ranks)
    _slices_sorted(model, ranks)
    renamed = _inputs_renamed(model, set(shapes))
    _nodes_named(model)
    return Prepared(model.SerializeToString(), renamed)


def _static(model: Any, shapes: dict[str, list[int]]) -> Any:
    """Input dims fixed, then onnxsim's constant folding (plain shape inference where onnxsim gives up)."""
    import onnx

    try:
        import onnxsim

        simplified, ok = onnxsim.simplify(model, overwrite_input_shapes={k: v for k, v in shapes.items() if v})
        if ok:
            return simplified
    except Exception:  # onnxsim refuses some graphs (If subgraphs, unsorted nodes): fix the dims by hand
        pass
    for tensor in model.graph.input:
        if tensor.name in shapes:
            for dim, size in zip(tensor.type.tensor_type.shape.dim, shapes[tensor.name], strict=False):
                dim.ClearField("dim_param")
                dim.dim_value = size
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model)


def _ranks(model: Any) -> dict[str, int]:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {v.name: len(v.type.tensor_type.shape.dim) for v in values if v.type.tensor_type.HasField("shape")}


def _opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=17)


def _pools_as_reductions(model: Any, ranks: dict[str, int]) -> None:
    """GlobalAverage/MaxPool -> ReduceMean/ReduceMax over axes 2.. (onnx2tf takes a global pool for an NCHW
    image and transposes it; a reduction it leaves in place)."""
    import onnx

    nodes = []
    for node in model.graph.node:
        rank = ranks.get(node.input[0], 0) if node.input else 0
        if node.op_type not in ("GlobalAveragePool", "GlobalMaxPool") or rank < 3:
            nodes.append(node)
            continue
        axes = list(range(2, rank))
        op = "ReduceMean" if node.op_type == "GlobalAveragePool" else "ReduceMax"
        if _opset(model) >= 18:
            const = onnx.helper.make_tensor(f"{node.name}_axes", onnx.TensorProto.INT64, [len(axes)], axes)
            model.graph.initializer.append(const)
            nodes.append(onnx.helper.make_node(op, [node.input[0], const.name], list(node.output), name=node.name,
                                               keepdims=1))
        else:
            nodes.append(onnx.helper.make_node(op, [node.input[0]], list(node.output), name=node.name, axes=axes,
                                               keepdims=1))
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _slices_sorted(model: Any, ranks: dict[str, int]) -> None:
    """Constant Slices with non-negative axes, in axis order, without entries that take everything."""
    from onnx import numpy_helper

    consts = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "Slice" or len(node.input) < 4 or any(x and x not in consts for x in node.input[1:]):
            continue
        starts, ends, axes = (numpy_helper.to_array(consts[x]).astype(np.int64) for x in node.input[1:4])
        has_steps = len(node.input) > 4 and node.input[4]
        steps = numpy_helper.to_array(consts[node.input[4]]).astype(np.int64) if has_steps else np.ones_like(starts)
        rank = ranks.get(node.input[0])
        if rank is None and (axes < 0).any():
            continue
        axes = np.where(axes < 0, axes + (rank or 0), axes)
        kept = [i for i in range(len(axes)) if not (starts[i] == 0 and steps[i] == 1 and ends[i] >= INT_MAX)] or [0]
        order = sorted(kept, key=lambda i: int(axes[i]))
        if order == list(range(len(axes))):
            continue
        names = []
        for tag, values in (("starts", starts), ("ends", ends), ("axes", axes), ("steps", steps)):
            tensor = numpy_helper.from_array(values[order], f"{node.name}_{tag}_sorted")
            model.graph.initializer.append(tensor)
            names.append(tensor.name)
        del node.input[1:]
        node.input.extend(names)


def _inputs_renamed(model: Any, inputs: set[str]) -> dict[str, str]:
    """Graph inputs named with [A-Za-z0-9_] only (onnx2tf renames others on its own, quietly)."""
    renamed = {n: re.sub(r"[^A-Za-z0-9_]", "_", n) for n in inputs if re.search(r"[^A-Za-z0-9_]", n)}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    for tensor in model.graph.input:
        if tensor.name in renamed:
            tensor.name = renamed[tensor.name]
    return renamed


def _nodes_named(model: Any) -> None:
    """Every node a unique name TensorFlow accepts as a scope (Paddle2ONNX leaves them empty)."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        base = re.sub(r"[^A-Za-z0-9_./>-]", "_", node.name) or f"{node.op_type}_{i}"
        name, k = base, 1
        while name in seen:
            name, k = f"{base}_{k}", k + 1
        seen.add(name)
        node.name = name
