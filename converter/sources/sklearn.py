"""A scikit-learn estimator or pipeline saved with joblib or pickle (`.pkl`, `.joblib`), loaded only with
`--trust-pickle`, converted to ONNX with skl2onnx. Classifiers ship their class probabilities."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from converter.errors import ModelLoadError
from converter.sources.base import SourceModel
from protocol.manifest import TensorSpec

UNTRUSTED = (
    "{name}: a pickle runs code when it is loaded; pass --trust-pickle if you trust where this file came from"
)
ML_OPSET = 3


def load_sklearn(path: Path, trust_pickle: bool) -> SourceModel:
    if not trust_pickle:
        raise ModelLoadError(UNTRUSTED.format(name=path.name))
    import joblib

    est = joblib.load(path)  # reads plain pickles too
    if not hasattr(est, "predict") or not hasattr(est, "n_features_in_"):
        raise ModelLoadError(f"{path.name}: holds a {type(est).__name__}, not a fitted scikit-learn estimator")
    classifier = hasattr(est, "classes_")
    if classifier and not hasattr(est, "predict_proba"):
        raise ModelLoadError(
            f"{path.name}: {type(est).__name__} gives no class probabilities (predict_proba); EdgeFleet ships a "
            "classifier's probabilities (for SVC, fit it with probability=True)"
        )
    n = int(est.n_features_in_)
    inputs = [TensorSpec(name="input", shape=[None, n], dtype="float32")]
    output_names = ["probabilities"] if classifier else ["prediction"]

    def predict(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = np.asarray(x["input"], np.float32)
        if classifier:
            return {"probabilities": np.asarray(est.predict_proba(rows), np.float32)}
        return {"prediction": np.asarray(est.predict(rows), np.float32).reshape(len(rows), -1)}

    def to_onnx() -> bytes:
        return _onnx(est, n, classifier)

    labels = [str(c) for c in est.classes_] if classifier else None
    return SourceModel("sklearn", path, inputs, output_names, predict, tflite_route="onnx2tf", labels=labels,
                       onnx_factory=to_onnx)


def _onnx(est: Any, n_features: int, classifier: bool) -> bytes:
    """skl2onnx's graph with one output under EdgeFleet's name: the probabilities, or the prediction."""
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    options = {id(est): {"zipmap": False}} if classifier else None
    proto = convert_sklearn(
        est, initial_types=[("input", FloatTensorType([None, n_features]))],
        target_opset={"": 17, "ai.onnx.ml": ML_OPSET}, options=options,
    )
    outputs = list(proto.graph.output)
    keep = outputs[1] if classifier else outputs[0]  # skl2onnx: (label, probabilities) / (variable,)
    wanted = "probabilities" if classifier else "prediction"
    del proto.graph.output[:]
    if keep.name == wanted:
        proto.graph.output.append(keep)
    else:
        proto.graph.node.append(onnx.helper.make_node("Identity", [keep.name], [wanted]))
        proto.graph.output.append(onnx.helper.make_tensor_value_info(wanted, keep.type.tensor_type.elem_type, None))
    if not any(o.domain in ("", "ai.onnx") for o in proto.opset_import):  # quantizers look for it
        proto.opset_import.append(onnx.helper.make_opsetid("", 17))
    return bytes(proto.SerializeToString())
