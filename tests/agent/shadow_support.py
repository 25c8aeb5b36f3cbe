"""Shadow test helpers: affine ONNX models of chosen weights, their manifests, desired states naming shadows,
and the shadow events an observer saw."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from agent.daemon import Agent
from protocol.manifest import Manifest, Task
from protocol.messages import DesiredModel, DesiredState
from protocol.shadow import DesiredShadow, ShadowSummary
from protocol.topics import Channel
from tests.agent.builders import make_manifest
from tests.agent.harness import Observer
from tests.agent.hubstub import HubStub


def onnx_affine(path: Path, w: np.ndarray, b: np.ndarray, *, batch_one_only: bool = False) -> Path:
    """y = x @ w + b, x [N, in] -> y [N, out]. `batch_one_only`: the graph reshapes x to [1, in] first, so the
    runtime refuses any other batch (inputs that pass the agent's validation and still fail in the runtime)."""
    inits = [numpy_helper.from_array(w.astype(np.float32), "W"), numpy_helper.from_array(b.astype(np.float32), "B")]
    nodes = []
    x = "x"
    if batch_one_only:
        inits.append(numpy_helper.from_array(np.array([1, w.shape[0]], np.int64), "S"))
        nodes.append(helper.make_node("Reshape", ["x", "S"], ["x1"]))
        x = "x1"
    nodes += [helper.make_node("MatMul", [x, "W"], ["xw"]), helper.make_node("Add", ["xw", "B"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", w.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", w.shape[1]])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def affine_manifest(
    artifact: Path, name: str, version: int, task: Task, *, atol: float = 1e-4, rtol: float = 0.0
) -> Manifest:
    """A valid manifest for an affine model, as a classifier or a regressor with the golden tolerance given."""
    base = make_manifest(artifact, name=name, version=version, atol=atol)
    data = base.model_dump()
    data["task"] = task
    data["golden"]["rtol"] = rtol
    return Manifest.model_validate(data)


def publish_affine(
    hub: HubStub, folder: Path, name: str, version: int, w: np.ndarray, b: np.ndarray, task: Task, **kw: Any
) -> tuple[str, Path]:
    """Sign an affine model version; returns (manifest target, artifact)."""
    art = onnx_affine(folder / f"{name}_v{version}.onnx", w, b, batch_one_only=kw.pop("batch_one_only", False))
    return hub.publish(affine_manifest(art, name, version, task, **kw), art), art


def desire(
    observer: Observer,
    generation: int,
    models: list[tuple[str, int, str]],
    shadows: list[DesiredShadow] | None = None,
    device_id: str = "dev-1",
) -> None:
    """Publish (retained) a desired state of (name, version, manifest target) models and these shadows."""
    state = DesiredState(
        device_id=device_id,
        generation=generation,
        models=[DesiredModel(name=n, version=v, manifest_target=t) for n, v, t in models],
        shadows=shadows or [],
        issued_at=datetime.now(UTC),
    )
    observer.publish(device_id, Channel.DESIRED, state.to_bytes(), retain=True)


def shadow_events(observer: Observer, model: str | None = None) -> list[dict[str, Any]]:
    return [e for e in observer.events("shadow") if model is None or e["model"] == model]


def windows(observer: Observer, model: str) -> list[ShadowSummary]:
    """The shadow windows of `model` the hub side received (events with details)."""
    return [ShadowSummary.model_validate(e["details"]) for e in shadow_events(observer, model) if e.get("details")]


def shadow_state(agent: Agent, name: str) -> str | None:
    view = agent.health_view()["shadows"].get(name)
    return None if view is None else str(view["state"])


def committed(observer: Observer, name: str, version: int) -> bool:
    return any(e["model"] == name and e["version"] == version for e in observer.events("committed"))


def disagreeing_bias(w: np.ndarray, b: np.ndarray, x: np.ndarray, share: float) -> np.ndarray:
    """b with class 0's bias raised so that about `share` of the rows of x change their top-1 class to 0."""
    logits = x.astype(np.float64) @ w + b
    top = logits.argmax(axis=1)
    margins = (logits.max(axis=1) - logits[:, 0])[top != 0]
    assert len(margins) >= share * len(x), "too few rows whose class is not 0"
    shift = float(np.quantile(margins, share * len(x) / len(margins)))
    out = b.copy()
    out[0] += shift
    return out
